/* The guest side of bench_floatstr.py: floatstr.c, exported. */
#include <aionub_guest.h>

#include "floatstr.c"

AB_EXPORT(floatstr_run, AB_STR, AB_INT, AB_INT);
AB_EXPORT(floatstr_timed, AB_INT, AB_INT, AB_INT);
