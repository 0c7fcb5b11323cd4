/* A guest for the debugger tests (built with -g -O0): a global, locals,
 * a loop to Ctrl-C, a fault with a known source line, and an int3. */
#include <aionub_guest.h>

int64_t total = 0; /* a global gdb reads */

static int64_t scale(int64_t x)
{
    int64_t factor = 3; /* a local gdb reads and sets */
    int64_t result = x * factor;
    return result;
}

static int64_t compute(int64_t x)
{
    int64_t scaled = scale(x);
    total += scaled;
    return scaled + 1;
}
AB_EXPORT(compute, AB_INT, AB_INT);

static int64_t spin_forever(void)
{
    volatile int64_t n = 0;
    for (;;)
        n++;
    return n;
}
AB_EXPORT_AS("spin", spin_forever, AB_INT);

static int64_t crash(int64_t address)
{
    volatile int64_t *p = (volatile int64_t *)address;
    return *p; /* CRASH LINE */
}
AB_EXPORT(crash, AB_INT, AB_INT);

static int64_t trap(void)
{
    __asm__ volatile("int3");
    return 7;
}
AB_EXPORT(trap, AB_INT);

static int64_t step_me(int64_t x)
{
    int64_t a = x + 1;
    int64_t b = a * 2;
    return b;
}
AB_EXPORT(step_me, AB_INT, AB_INT);
