/*
 * musl's system-call boundary for aionub guests. It takes the place of
 * musl's arch/x86_64/syscall_arch.h when the guest libc is built
 * (src/aionub/_libc.py puts this directory first on the include path).
 *
 * There is no kernel in the guest and no CPL0 code on this path: each of
 * musl's system calls becomes an ordinary function call into the guest
 * runtime (native/guest/runtime/syscall.c), which answers it itself or
 * asks the host with a hypercall (docs/abi.md, "System calls"). musl's
 * architecture files that issue the `syscall` instruction directly are
 * left out of the build in favour of its generic C versions, which come
 * through here.
 */
#define __SYSCALL_LL_E(x) (x)
#define __SYSCALL_LL_O(x) (x)

long ab__syscall(long n, long a1, long a2, long a3, long a4, long a5, long a6);

static __inline long __syscall0(long n)
{
	return ab__syscall(n, 0, 0, 0, 0, 0, 0);
}

static __inline long __syscall1(long n, long a1)
{
	return ab__syscall(n, a1, 0, 0, 0, 0, 0);
}

static __inline long __syscall2(long n, long a1, long a2)
{
	return ab__syscall(n, a1, a2, 0, 0, 0, 0);
}

static __inline long __syscall3(long n, long a1, long a2, long a3)
{
	return ab__syscall(n, a1, a2, a3, 0, 0, 0);
}

static __inline long __syscall4(long n, long a1, long a2, long a3, long a4)
{
	return ab__syscall(n, a1, a2, a3, a4, 0, 0);
}

static __inline long __syscall5(long n, long a1, long a2, long a3, long a4, long a5)
{
	return ab__syscall(n, a1, a2, a3, a4, a5, 0);
}

static __inline long __syscall6(long n, long a1, long a2, long a3, long a4, long a5, long a6)
{
	return ab__syscall(n, a1, a2, a3, a4, a5, a6);
}

/* No vDSO: clock_gettime comes here too. */

#define IPC_64 0
