/* aionub guest SDK: <stdlib.h> subset. */
#ifndef AIONUB_GUEST_STDLIB_H
#define AIONUB_GUEST_STDLIB_H

#include <stddef.h>

/* The heap is the region the host gives the guest (boot info heap_addr and
 * heap_size). Blocks are 16-byte aligned; allocation fails with NULL when
 * the heap is exhausted. free() and realloc() abort the guest on a pointer
 * that malloc did not return (or that was already freed, when detectable).
 * realloc(p, 0) frees p and returns NULL. */
void *malloc(size_t size) __attribute__((malloc, alloc_size(1)));
void *calloc(size_t nmemb, size_t size) __attribute__((malloc, alloc_size(1, 2)));
void *realloc(void *ptr, size_t size) __attribute__((alloc_size(2)));
void free(void *ptr);

/* Aborts the guest with code -1 (GuestAborted on the host). */
_Noreturn void abort(void);

long strtol(const char *restrict s, char **restrict end, int base);
long long strtoll(const char *restrict s, char **restrict end, int base);
unsigned long strtoul(const char *restrict s, char **restrict end, int base);
unsigned long long strtoull(const char *restrict s, char **restrict end, int base);
int atoi(const char *s);
long atol(const char *s);
long long atoll(const char *s);

static inline int abs(int x) { return x < 0 ? -x : x; }
static inline long labs(long x) { return x < 0 ? -x : x; }
static inline long long llabs(long long x) { return x < 0 ? -x : x; }

#endif
