/* Stub for the macOS type-check only (checks/macos/check.sh): ring's build
 * script compiles a little C for the Apple targets, and without a macOS SDK
 * clang runs freestanding. These declarations are all ring's C needs to
 * compile; nothing built with them is ever linked or run. */
#ifndef NIXFLEET_STUB_STRING_H
#define NIXFLEET_STUB_STRING_H
#include <stddef.h>
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
#endif
