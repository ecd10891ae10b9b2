/* Stub for the macOS type-check only (checks/macos/check.sh): assert() as a
 * no-op. Never used by a build that links. */
#ifndef NIXFLEET_STUB_ASSERT_H
#define NIXFLEET_STUB_ASSERT_H
#define assert(e) ((void)0)
#endif
