/* bench_floatstr.py's third side: floatstr.c run natively on Linux with the
 * guest SDK's own musl (its libc.a), so that the guest is compared with the
 * same machine code and the same C library outside the VM.
 *
 * musl_linux.c gives the SDK's musl the Linux system calls and _start.
 *
 *     floatstr_musl N SEED REPS    prints REPS lines: ns of floatstr_run(N, SEED + i)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int64_t floatstr_timed(int64_t n, int64_t seed);

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: floatstr_musl N SEED REPS\n");
        return 2;
    }
    int64_t n = atoll(argv[1]), seed = atoll(argv[2]), reps = atoll(argv[3]);
    for (int64_t i = 0; i < reps; i++)
        printf("%lld\n", (long long)floatstr_timed(n, seed + i));
    return 0;
}
