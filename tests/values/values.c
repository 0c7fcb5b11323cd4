/*
 * Test guest for structured values (tests/test_values.py): AB_ANY exports,
 * results that own heap memory, host calls with lists and dicts, invalid
 * results, forged records, and the runtime's value decoder run on bytes
 * from the test (built with the runtime's private header).
 */
#include "internal.h" /* native/guest/runtime: the decoder under test */

/* echo(x) == x */
static ab_value echo(const ab_value *v) { return *v; }
AB_EXPORT(echo, AB_ANY, AB_ANY);

/* Mixed parameters: an any between typed ones; the item at `i` of a list. */
static ab_value pick(int64_t i, const ab_value *list, double scale) {
    if (list->type != AB_LIST || i < 0 || (size_t)i >= list->list.len)
        return ab_none();
    ab_value item = list->list.items[i];
    if (item.type == AB_FLOAT)
        item.f *= scale;
    return item;
}
AB_EXPORT(pick, AB_ANY, AB_INT, AB_ANY, AB_FLOAT);

/* Six integer-class parameters and an ab_value result, which is returned in
 * memory (a hidden pointer in rdi): the sixth travels on the stack. */
static ab_value six(int64_t a, int64_t b, const ab_value *c, const char *d, bool e, int64_t f) {
    static ab_value items[6];
    items[0] = ab_int(a);
    items[1] = ab_int(b);
    items[2] = *c;
    items[3] = ab_str(d);
    items[4] = ab_bool(e);
    items[5] = ab_int(f);
    return ab_list(items, 6);
}
AB_EXPORT(six, AB_ANY, AB_INT, AB_INT, AB_ANY, AB_STR, AB_BOOL, AB_INT);

/* The number of values inside (the value itself counts 1), in C. */
static int64_t count(const ab_value *v) {
    int64_t n = 1;
    if (v->type == AB_LIST)
        for (size_t i = 0; i < v->list.len; i++)
            n += count(&v->list.items[i]);
    if (v->type == AB_DICT)
        for (size_t i = 0; i < v->dict.len; i++)
            n += count(&v->dict.entries[i].value);
    return n;
}
AB_EXPORT(count, AB_INT, AB_ANY);

/* get(d, "k"): ab_dict_get */
static ab_value get(const ab_value *d, const char *key) {
    const ab_value *v = ab_dict_get(d, key);
    return v ? *v : ab_str("<missing>");
}
AB_EXPORT(get, AB_ANY, AB_ANY, AB_STR);

/* A fresh structure on the heap, every part owned: the runtime frees it
 * after encoding (a leak would exhaust the heap over many calls). */
static ab_value build(int64_t n) {
    ab_value *items = malloc((size_t)n * sizeof *items);
    ab_entry *entries = malloc(3 * sizeof *entries);
    if (!items || !entries)
        ab_abort(12, "build: out of memory");
    for (int64_t i = 0; i < n; i++) {
        char *s = malloc(32);
        if (!s)
            ab_abort(12, "build: out of memory");
        int len = snprintf(s, 32, "item %lld", (long long)i);
        items[i] = ab_owned(ab_strn(s, (size_t)len));
    }
    char *key = strdup("items");
    entries[0] = (ab_entry){.key = key, .key_len = 5, .key_owned = true,
                            .value = ab_owned(ab_list(items, (size_t)n))};
    entries[1] = ab_key("n", ab_int(n));
    entries[2] = ab_key("static", ab_str("not owned"));
    return ab_owned(ab_dict(entries, 3));
}
AB_EXPORT(build, AB_ANY, AB_INT);

/* Sends x to the host function "echo" and returns what it answered (or the
 * error message): the result's ownership passes to the runtime. */
static ab_value via_host(const ab_value *x) {
    ab_value result;
    ab_call_host("echo", x, 1, &result);
    return result;
}
AB_EXPORT(via_host, AB_ANY, AB_ANY);

/* call_host("f", [args...]): the host's result, or its error message. */
static ab_value call_host(const char *name, const ab_value *args) {
    ab_value result;
    if (args->type != AB_LIST)
        ab_abort(2, "call_host: args must be a list");
    ab_call_host(name, args->list.items, args->list.len, &result);
    return result;
}
AB_EXPORT(call_host, AB_ANY, AB_STR, AB_ANY);

/* Calls the host function "make" n times with a list and a dict, freeing
 * each result; returns the sum of the results' "n" fields. */
static int64_t host_many(int64_t n, int64_t size) {
    int64_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        ab_value nums[3] = {ab_int(i), ab_float(0.5), ab_str("x")};
        ab_entry opts[2] = {ab_key("size", ab_int(size)), ab_key("tags", ab_list(nums, 3))};
        ab_value args[2] = {ab_list(nums, 3), ab_dict(opts, 2)}, result;
        if (ab_call_host("make", args, 2, &result) != 0)
            ab_abort(3, "make failed: %s", (const char *)result.buf.ptr);
        const ab_value *v = ab_dict_get(&result, "n");
        total += v && v->type == AB_INT ? v->i : -1000000;
        ab_value_free(&result);
    }
    return total;
}
AB_EXPORT(host_many, AB_INT, AB_INT, AB_INT);

/* A host call with an invalid argument: the error message, with its path. */
static const char *host_bad_arg(void) {
    static ab_value inner[2];
    static ab_entry entries[1];
    inner[0] = ab_int(1);
    inner[1] = ab_strn("\xff", 1);
    entries[0] = ab_key("k", ab_list(inner, 2));
    ab_value arg = ab_dict(entries, 1), result;
    static char msg[400];
    if (ab_call_host("echo", &arg, 1, &result) == 0)
        return "accepted";
    snprintf(msg, sizeof msg, "%s", (const char *)result.buf.ptr);
    ab_value_free(&result);
    return msg;
}
AB_EXPORT(host_bad_arg, AB_STR);

/* Invalid results: each aborts the guest with a message naming the path. */
static ab_value bad_result(const char *kind) {
    static ab_value items[4];
    static ab_entry entries[40];
    static ab_value chain[AB_MAX_DEPTH + 1];
    static char keys[40][8];
    if (!strcmp(kind, "null_items"))
        return ab_list(NULL, 3);
    if (!strcmp(kind, "bad_utf8")) {
        items[0] = ab_int(1);
        items[1] = ab_str("\xc3\x28");
        entries[0] = ab_key("price", ab_list(items, 2));
        return ab_dict(entries, 1);
    }
    if (!strcmp(kind, "bad_key")) {
        entries[0] = ab_key("\xff", ab_none());
        return ab_dict(entries, 1);
    }
    if (!strcmp(kind, "dup_key")) {
        entries[0] = ab_key("a", ab_int(1));
        entries[1] = ab_key("a", ab_int(2));
        return ab_dict(entries, 2);
    }
    if (!strcmp(kind, "dup_key_many")) {
        for (int i = 0; i < 40; i++) {
            snprintf(keys[i], sizeof keys[i], "k%d", i == 33 ? 7 : i);
            entries[i] = ab_key(keys[i], ab_int(i));
        }
        return ab_dict(entries, 40);
    }
    if (!strcmp(kind, "deep")) {
        for (int i = 0; i < AB_MAX_DEPTH; i++)
            chain[i] = ab_list(&chain[i + 1], 1);
        chain[AB_MAX_DEPTH] = ab_list(NULL, 0);
        return chain[0]; /* 65 levels */
    }
    if (!strcmp(kind, "deepest")) {
        for (int i = 0; i < AB_MAX_DEPTH - 1; i++)
            chain[i] = ab_list(&chain[i + 1], 1);
        chain[AB_MAX_DEPTH - 1] = ab_list(NULL, 0);
        return chain[0]; /* 64 levels: fine */
    }
    if (!strcmp(kind, "cycle")) {
        items[0] = ab_list(items, 1);
        return items[0];
    }
    if (!strcmp(kind, "bad_type")) {
        items[0] = (ab_value){.type = (ab_type)42};
        return ab_list(items, 1);
    }
    if (!strcmp(kind, "any_type")) {
        items[0] = (ab_value){.type = AB_ANY};
        return ab_list(items, 1);
    }
    ab_abort(2, "bad_result: unknown %s", kind);
}
AB_EXPORT(bad_result, AB_ANY, AB_STR);

/* A list of n strings of len bytes each (static data). */
static ab_value big(int64_t n, int64_t len) {
    static char text[70000];
    static ab_value items[20000];
    memset(text, 'x', sizeof text - 1);
    if (n > 20000 || len >= (int64_t)sizeof text)
        ab_abort(2, "big: too big");
    for (int64_t i = 0; i < n; i++)
        items[i] = ab_strn(text, (size_t)len);
    return ab_list(items, (size_t)n);
}
AB_EXPORT(big, AB_ANY, AB_INT, AB_INT);

/* ---- forged records ------------------------------------------------------------ */

/* Writes `record` at the start of the output buffer and exits through
 * `port` with its length: a RESULT record (status and value) or a HOSTCALL
 * request, as the test wrote it. */
static void out_port(uint16_t port, uint32_t n) {
    __asm__ volatile("outl %0, %w1" : : "a"(n), "d"(port) : "memory");
}

static ab_value forge_raw(const uint8_t *record, size_t len, int64_t port) {
    if (len > ab__out_size)
        ab_abort(2, "forge: record too long");
    memcpy(ab__out, record, len);
    out_port((uint16_t)port, (uint32_t)len);
    return ab_none(); /* after a host call the host resumes us */
}
AB_EXPORT(forge_raw, AB_ANY, AB_BYTES, AB_INT);

/* A RESULT record of `depth` nested one-item lists (generated in the guest:
 * it may be far larger than the input buffer). */
static ab_value forge_deep(int64_t depth, int64_t port) {
    size_t need = 1 + (size_t)depth * 5 + 1 + (port == AB_PORT_HOSTCALL ? 9 : 0);
    if (need > ab__out_size)
        ab_abort(2, "forge_deep: %zu bytes do not fit", need);
    uint8_t *p = ab__out;
    if (port == AB_PORT_HOSTCALL) {
        memcpy(p, "\x04\0\0\0echo\0\x01", 10);
        p += 10;
    } else {
        *p++ = AB_STATUS_OK;
    }
    for (int64_t i = 0; i < depth; i++) {
        *p++ = AB_TAG_LIST;
        memcpy(p, &(uint32_t){1}, 4);
        p += 4;
    }
    *p++ = AB_TAG_NONE;
    out_port((uint16_t)port, (uint32_t)(p - ab__out));
    return ab_none();
}
AB_EXPORT(forge_deep, AB_ANY, AB_INT, AB_INT);

/* ---- the runtime's decoder on bytes from the test --------------------------------- */

/* Decodes `record` as one value the way the runtime decodes the host's
 * bytes, then encodes what it built: ["bad"] when the decoder rejects the
 * bytes, ["ok", re-encoded bytes, consumed] or ["refused", problem] when
 * the encoder refuses what was decoded (bad UTF-8, a duplicate key). The
 * record is copied to the heap first, so a read past it would fault or be
 * seen by the heap check below. */
static ab_value decode(const uint8_t *record, size_t len, bool copy) {
    static ab_value reply[3];
    static uint8_t encoded[70000];
    static ab__value_error err;
    uint8_t *buf = malloc(len ? len : 1);
    memcpy(buf, record, len);
    ab__reader r = {buf, len, 0, false};
    ab__value_size size = {0, 0, 0};
    if (!ab__value_measure(&r, &size)) {
        free(buf);
        reply[0] = ab_str("bad");
        return ab_list(reply, 1);
    }
    size_t consumed = r.pos;
    size_t n = ab__value_block_size(&size, copy);
    uint8_t *block = n ? malloc(n) : NULL;
    size_t nodes = size.values * sizeof(ab_value) + size.entries * sizeof(ab_entry);
    ab__value_mem m = {block, copy ? (char *)block + nodes : NULL, copy};
    r.pos = 0;
    ab_value v;
    ab__value_build(&r, &v, &m);
    if (r.pos != consumed || m.nodes != block + nodes ||
        (copy && (size_t)((uint8_t *)m.strs - block) != n))
        ab_abort(5, "decode: build and measure disagree");
    v.owned = block != NULL;
    ab__writer w = {encoded, sizeof encoded, 0, false};
    if (ab__put_value(&w, &v, &err)) {
        reply[0] = ab_str("ok");
        reply[1] = ab_bytes_value(encoded, w.len);
        reply[2] = ab_int((int64_t)consumed);
    } else {
        reply[0] = ab_str("refused");
        reply[1] = ab_str(err.problem);
        reply[2] = ab_str(err.path);
    }
    ab_value_free(&v); /* frees the block */
    free(buf);
    return ab_list(reply, 3);
}
static ab_value decode_copy(const uint8_t *record, size_t len) { return decode(record, len, true); }
AB_EXPORT(decode_copy, AB_ANY, AB_BYTES);
static ab_value decode_inplace(const uint8_t *record, size_t len) { return decode(record, len, false); }
AB_EXPORT(decode_inplace, AB_ANY, AB_BYTES);
