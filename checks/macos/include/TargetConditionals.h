/* Stub for the macOS type-check only (checks/macos/check.sh): what the SDK's
 * header says for a macOS build. Never used by a build that links. */
#ifndef NIXFLEET_STUB_TARGET_CONDITIONALS_H
#define NIXFLEET_STUB_TARGET_CONDITIONALS_H
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#define TARGET_OS_IOS 0
#define TARGET_OS_WATCH 0
#define TARGET_OS_TV 0
#define TARGET_OS_SIMULATOR 0
#endif
