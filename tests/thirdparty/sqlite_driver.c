/* SQLite in a guest, on an in-memory database. exec(sql) runs the
 * statements and returns every row as "col|col|..." lines (NULL as "NULL");
 * an error gives "error: <message>". Built by tests/test_thirdparty.py with
 * the amalgamation (aionub._sources "sqlite"). */
#include <aionub_guest.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite3.h"

static sqlite3 *db;
static char *out;
static size_t used, cap;

static void append(const char *s, size_t n) {
    if (used + n + 1 > cap) {
        size_t want = cap ? cap : 256;
        while (used + n + 1 > want)
            want *= 2;
        char *bigger = realloc(out, want);
        if (bigger == NULL)
            ab_abort(12, "no memory for a %zu-byte result", want);
        out = bigger;
        cap = want;
    }
    memcpy(out + used, s, n);
    used += n;
    out[used] = '\0';
}

static int row(void *unused, int ncols, char **values, char **names) {
    (void)unused;
    (void)names;
    for (int i = 0; i < ncols; i++) {
        const char *v = values[i] ? values[i] : "NULL";
        if (i)
            append("|", 1);
        append(v, strlen(v));
    }
    append("\n", 1);
    return 0;
}

static const char *sql_exec(const char *sql) {
    if (db == NULL && sqlite3_open(":memory:", &db) != SQLITE_OK)
        ab_abort(1, "sqlite3_open: %s", db ? sqlite3_errmsg(db) : "out of memory");
    used = 0;
    append("", 0);
    char *err = NULL;
    if (sqlite3_exec(db, sql, row, NULL, &err) != SQLITE_OK) {
        used = 0;
        append("error: ", 7);
        append(err ? err : "?", strlen(err ? err : "?"));
        sqlite3_free(err);
    }
    return out;
}
AB_EXPORT_AS("exec", sql_exec, AB_STR, AB_STR);

static const char *version(void) { return sqlite3_libversion(); }
AB_EXPORT(version, AB_STR);
