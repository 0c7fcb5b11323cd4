/*
 * Values on the wire (docs/abi.md, "Wire format"): encoding an ab_value tree
 * into a writer, checking everything the guest author may have got wrong,
 * and decoding one from bytes the host wrote, checked as carefully (tags,
 * lengths, counts against the bytes left, nesting depth).
 *
 * Decoding takes two passes over the bytes: ab__value_measure() validates a
 * value and adds up the memory it needs, ab__value_build() builds it from
 * one block of that size. Recursion is bounded by AB_MAX_DEPTH everywhere.
 */
#include "internal.h"

/* ---- encoding ---------------------------------------------------------------- */

typedef struct {
    ab__value_error *err;
    unsigned depth;
    const ab_value *at[AB_MAX_DEPTH]; /* the containers on the path */
    size_t index[AB_MAX_DEPTH];       /* and the item or entry in each */
} enc;

static void add_path(char *path, size_t cap, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void add_path(char *path, size_t cap, size_t *len, const char *fmt, ...) {
    if (*len >= cap - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(path + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n > 0)
        *len = (size_t)n >= cap - *len ? cap - 1 : *len + (size_t)n;
}

__attribute__((format(printf, 2, 3))) static bool bad(enc *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err->problem, sizeof c->err->problem, fmt, ap);
    va_end(ap);
    /* The path to the bad part: [3]['price'] */
    char *path = c->err->path;
    size_t cap = sizeof c->err->path, len = 0;
    path[0] = 0;
    for (unsigned d = 0; d < c->depth; d++) {
        const ab_value *v = c->at[d];
        if (v->type == AB_LIST) {
            add_path(path, cap, &len, "[%zu]", c->index[d]);
        } else {
            const ab_entry *e = &v->dict.entries[c->index[d]];
            size_t klen = e->key ? ab__utf8_valid_prefix((const uint8_t *)e->key, e->key_len) : 0;
            if (klen > 40)
                klen = ab__utf8_valid_prefix((const uint8_t *)e->key, 40);
            add_path(path, cap, &len, "['%.*s%s']", (int)klen, e->key ? e->key : "",
                     klen < e->key_len ? "..." : "");
        }
    }
    return false;
}

static bool valid_text(const void *p, size_t n) {
    return ab__utf8_valid_prefix((const uint8_t *)p, n) == n;
}

static int key_cmp(const void *a, const void *b) {
    const ab_entry *x = *(const ab_entry *const *)a, *y = *(const ab_entry *const *)b;
    if (x->key_len != y->key_len)
        return x->key_len < y->key_len ? -1 : 1;
    return memcmp(x->key, y->key, x->key_len);
}

/* The index of an entry whose key an earlier entry already has, or len. */
static size_t duplicate_key(const ab_entry *entries, size_t len) {
    if (len < 2)
        return len;
    if (len <= 32) {
        for (size_t i = 1; i < len; i++)
            for (size_t j = 0; j < i; j++)
                if (entries[i].key_len == entries[j].key_len &&
                    memcmp(entries[i].key, entries[j].key, entries[i].key_len) == 0)
                    return i;
        return len;
    }
    const ab_entry **sorted = malloc(len * sizeof *sorted);
    if (!sorted) /* the host checks again */
        return len;
    for (size_t i = 0; i < len; i++)
        sorted[i] = &entries[i];
    qsort(sorted, len, sizeof *sorted, key_cmp);
    size_t found = len;
    for (size_t i = 1; i < len && found == len; i++)
        if (key_cmp(&sorted[i - 1], &sorted[i]) == 0)
            found = (size_t)(sorted[i] - entries);
    free(sorted);
    return found;
}

static bool put(ab__writer *w, const ab_value *v, enc *c) {
    if (w->full) /* it will not fit anyway: stop early */
        return true;
    switch (v->type) {
    case AB_VOID:
        ab__put_u8(w, AB_TAG_NONE);
        return true;
    case AB_BOOL:
        ab__put_u8(w, AB_TAG_BOOL);
        ab__put_u8(w, v->b ? 1 : 0);
        return true;
    case AB_INT:
        ab__put_u8(w, AB_TAG_INT);
        ab__put_u64(w, (uint64_t)v->i);
        return true;
    case AB_FLOAT: {
        uint64_t bits;
        memcpy(&bits, &v->f, 8);
        ab__put_u8(w, AB_TAG_FLOAT);
        ab__put_u64(w, bits);
        return true;
    }
    case AB_STR:
    case AB_BYTES:
        if (v->buf.len && !v->buf.ptr)
            return bad(c, "%s with a NULL pointer and length %zu", ab__type_name(v->type),
                       v->buf.len);
        if (v->buf.len > UINT32_MAX)
            return bad(c, "%s of %zu bytes is too long", ab__type_name(v->type), v->buf.len);
        if (v->type == AB_STR && !valid_text(v->buf.ptr, v->buf.len))
            return bad(c, "str is not valid UTF-8 (at byte %zu)",
                       ab__utf8_valid_prefix((const uint8_t *)v->buf.ptr, v->buf.len));
        ab__put_u8(w, (uint8_t)v->type);
        ab__put_lstr(w, v->buf.ptr, v->buf.len);
        return true;
    case AB_LIST:
    case AB_DICT: {
        bool list = v->type == AB_LIST;
        size_t len = list ? v->list.len : v->dict.len;
        const void *items = list ? (const void *)v->list.items : (const void *)v->dict.entries;
        if (c->depth >= AB_MAX_DEPTH)
            return bad(c, "lists and dicts nest deeper than %d levels", AB_MAX_DEPTH);
        if (len && !items)
            return bad(c, "%s with a NULL %s pointer and length %zu", ab__type_name(v->type),
                       list ? "items" : "entries", len);
        if (len > UINT32_MAX)
            return bad(c, "%s of %zu items is too long", ab__type_name(v->type), len);
        ab__put_u8(w, (uint8_t)v->type);
        ab__put_u32(w, (uint32_t)len);
        unsigned d = c->depth++;
        c->at[d] = v;
        for (size_t i = 0; i < len && !w->full; i++) {
            c->index[d] = i;
            if (list) {
                if (!put(w, &v->list.items[i], c))
                    return false;
                continue;
            }
            const ab_entry *e = &v->dict.entries[i];
            if (!e->key)
                return bad(c, "a dict key is NULL");
            if (e->key_len > UINT32_MAX || !valid_text(e->key, e->key_len))
                return bad(c, "a dict key is not valid UTF-8");
            ab__put_lstr(w, e->key, e->key_len);
            if (!put(w, &e->value, c))
                return false;
        }
        c->depth = d;
        if (!list && !w->full) {
            size_t dup = duplicate_key(v->dict.entries, len);
            if (dup < len) {
                c->depth = d + 1;
                c->index[d] = dup;
                return bad(c, "the dict has this key twice");
            }
        }
        return true;
    }
    default:
        return bad(c, "invalid ab_value type %d", (int)v->type);
    }
}

bool ab__put_value(ab__writer *w, const ab_value *v, ab__value_error *err) {
    enc c = {.err = err, .depth = 0};
    err->path[0] = err->problem[0] = 0;
    return put(w, v, &c);
}

/* ---- decoding ------------------------------------------------------------------ */

static bool measure(ab__reader *r, unsigned depth, ab__value_size *s) {
    uint8_t tag = ab__get_u8(r);
    switch (tag) {
    case AB_TAG_NONE:
        break;
    case AB_TAG_BOOL:
        if (ab__get_u8(r) > 1)
            r->bad = true;
        break;
    case AB_TAG_INT:
    case AB_TAG_FLOAT:
        ab__get_u64(r);
        break;
    case AB_TAG_STR:
    case AB_TAG_BYTES: {
        const uint8_t *p;
        uint32_t n;
        if (ab__get_lstr(r, &p, &n))
            s->bytes += (size_t)n + 1;
        break;
    }
    case AB_TAG_LIST:
    case AB_TAG_DICT: {
        uint32_t n = ab__get_u32(r);
        size_t min = tag == AB_TAG_LIST ? AB_MIN_VALUE_SIZE : AB_MIN_ENTRY_SIZE;
        if (r->bad || depth >= AB_MAX_DEPTH || n > (r->size - r->pos) / min) {
            r->bad = true;
            break;
        }
        if (tag == AB_TAG_LIST)
            s->values += n;
        else
            s->entries += n;
        for (uint32_t i = 0; i < n && !r->bad; i++) {
            if (tag == AB_TAG_DICT) {
                const uint8_t *p;
                uint32_t klen;
                if (!ab__get_lstr(r, &p, &klen))
                    break;
                s->bytes += (size_t)klen + 1;
            }
            measure(r, depth + 1, s);
        }
        break;
    }
    default:
        r->bad = true;
    }
    return !r->bad;
}

bool ab__value_measure(ab__reader *r, ab__value_size *size) { return measure(r, 0, size); }

size_t ab__value_block_size(const ab__value_size *size, bool copy) {
    return size->values * sizeof(ab_value) + size->entries * sizeof(ab_entry) +
           (copy ? size->bytes : 0);
}

static const void *text(ab__reader *r, ab__value_mem *m, uint32_t *len) {
    const uint8_t *p;
    if (!ab__get_lstr(r, &p, len))
        return "";
    if (!m->copy)
        return p; /* NUL-terminated in the buffer */
    char *copy = m->strs;
    memcpy(copy, p, *len);
    copy[*len] = 0;
    m->strs += *len + 1;
    return copy;
}

static void build(ab__reader *r, ab_value *out, ab__value_mem *m) {
    uint8_t tag = ab__get_u8(r);
    switch (tag) {
    case AB_TAG_BOOL:
        *out = ab_bool(ab__get_u8(r) != 0);
        return;
    case AB_TAG_INT:
        *out = ab_int((int64_t)ab__get_u64(r));
        return;
    case AB_TAG_FLOAT: {
        uint64_t bits = ab__get_u64(r);
        double f;
        memcpy(&f, &bits, 8);
        *out = ab_float(f);
        return;
    }
    case AB_TAG_STR:
    case AB_TAG_BYTES: {
        uint32_t n;
        const void *p = text(r, m, &n);
        *out = (ab_value){.type = (ab_type)tag, .buf = {p, n}};
        return;
    }
    case AB_TAG_LIST: {
        uint32_t n = ab__get_u32(r);
        ab_value *items = n ? (ab_value *)(void *)m->nodes : NULL;
        m->nodes += (size_t)n * sizeof(ab_value);
        for (uint32_t i = 0; i < n; i++)
            build(r, &items[i], m);
        *out = ab_list(items, n);
        return;
    }
    case AB_TAG_DICT: {
        uint32_t n = ab__get_u32(r);
        ab_entry *entries = n ? (ab_entry *)(void *)m->nodes : NULL;
        m->nodes += (size_t)n * sizeof(ab_entry);
        for (uint32_t i = 0; i < n; i++) {
            uint32_t klen;
            const char *key = text(r, m, &klen);
            entries[i] = (ab_entry){.key = key, .key_len = klen};
            build(r, &entries[i].value, m);
        }
        *out = ab_dict(entries, n);
        return;
    }
    default:
        *out = ab_none();
    }
}

void ab__value_build(ab__reader *r, ab_value *out, ab__value_mem *m) { build(r, out, m); }

/* ---- freeing and looking up ------------------------------------------------------ */

static void free_value(ab_value *v, unsigned depth) {
    if (depth < AB_MAX_DEPTH) {
        if (v->type == AB_LIST && v->list.items) {
            for (size_t i = 0; i < v->list.len; i++)
                free_value((ab_value *)&v->list.items[i], depth + 1);
        } else if (v->type == AB_DICT && v->dict.entries) {
            for (size_t i = 0; i < v->dict.len; i++) {
                ab_entry *e = (ab_entry *)&v->dict.entries[i];
                if (e->key_owned)
                    free((void *)e->key);
                free_value(&e->value, depth + 1);
            }
        }
    }
    if (!v->owned)
        return;
    switch (v->type) {
    case AB_STR:
    case AB_BYTES:
        free((void *)v->buf.ptr);
        break;
    case AB_LIST:
        free((void *)v->list.items);
        break;
    case AB_DICT:
        free((void *)v->dict.entries);
        break;
    default:
        break;
    }
}

void ab_value_free(ab_value *v) {
    if (!v)
        return;
    free_value(v, 0);
    *v = ab_none();
}

const ab_value *ab_dict_get(const ab_value *dict, const char *key) {
    if (!dict || dict->type != AB_DICT || !key || (dict->dict.len && !dict->dict.entries))
        return NULL;
    size_t n = strlen(key);
    for (size_t i = 0; i < dict->dict.len; i++) {
        const ab_entry *e = &dict->dict.entries[i];
        if (e->key_len == n && e->key && memcmp(e->key, key, n) == 0)
            return &e->value;
    }
    return NULL;
}
