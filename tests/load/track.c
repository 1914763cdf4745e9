/*
 * track.c - acknowledged-change tracking and the post-run check (track.h).
 */
#include "track.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "workload.h"

#define ID_MAX 64
#define SEQ_BITS 40

struct id_entry {
    char id[ID_MAX + 1];
    uint64_t rev;       /* marker of the last acknowledged write (if !removed) */
    int64_t version;    /* version of the last acknowledged change */
    bool removed;
};

struct tenant_track {
    pthread_mutex_t mu;
    uint64_t acked;     /* acknowledged changes */
    bool uncertain;
    struct id_entry *ids; /* owned, n used of cap; a draft holds ~25 ids */
    size_t n, cap;
};

struct track {
    size_t ntenants;
    int64_t base_version;
    struct tenant_track *t; /* owned array of ntenants */
};

track *track_new(size_t ntenants, int64_t base_version)
{
    track *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->t = calloc(ntenants, sizeof *t->t);
    if (t->t == NULL) {
        free(t);
        return NULL;
    }
    t->ntenants = ntenants;
    t->base_version = base_version;
    for (size_t i = 0; i < ntenants; i++)
        pthread_mutex_init(&t->t[i].mu, NULL);
    return t;
}

void track_free(track *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->ntenants; i++) {
        pthread_mutex_destroy(&t->t[i].mu);
        free(t->t[i].ids);
    }
    free(t->t);
    free(t);
}

uint64_t track_rev(unsigned client, uint64_t seq)
{
    return ((uint64_t)client + 1) << SEQ_BITS | (seq & ((UINT64_C(1) << SEQ_BITS) - 1));
}

void track_rev_text(char *buf, size_t len, unsigned client, uint64_t seq)
{
    snprintf(buf, len, "c%u-%" PRIu64, client, seq);
}

/* The marker of a rev text, or 0 for anything else ("seed", garbage). */
static uint64_t rev_parse(const char *s)
{
    if (s == NULL || s[0] != 'c' || s[1] < '0' || s[1] > '9')
        return 0;
    char *end;
    unsigned long long client = strtoull(s + 1, &end, 10);
    if (*end != '-' || end[1] < '0' || end[1] > '9' || client >= (1u << 23))
        return 0;
    unsigned long long seq = strtoull(end + 1, &end, 10);
    if (*end != '\0' || seq >= (UINT64_C(1) << SEQ_BITS))
        return 0;
    return track_rev((unsigned)client, seq);
}

/* Record one change under the tenant's lock: the highest version wins; on a
 * tie (only possible if two commits were built on the same state, i.e. one
 * overwrote the other) the first recorded stays and version_deficit shows it. */
static void record(track *t, size_t tenant, const char *id, bool removed, uint64_t rev,
                   int64_t version)
{
    if (tenant >= t->ntenants || strlen(id) > ID_MAX)
        return;
    struct tenant_track *tt = &t->t[tenant];
    pthread_mutex_lock(&tt->mu);
    tt->acked++;
    struct id_entry *e = NULL;
    for (size_t i = 0; i < tt->n; i++)
        if (strcmp(tt->ids[i].id, id) == 0) {
            e = &tt->ids[i];
            break;
        }
    if (e == NULL) {
        if (tt->n == tt->cap) {
            size_t cap = tt->cap ? tt->cap * 2 : 8;
            struct id_entry *ids = realloc(tt->ids, cap * sizeof *ids);
            if (ids == NULL) {
                /* cannot track it: do not claim anything about this tenant */
                tt->uncertain = true;
                pthread_mutex_unlock(&tt->mu);
                return;
            }
            tt->ids = ids;
            tt->cap = cap;
        }
        e = &tt->ids[tt->n++];
        snprintf(e->id, sizeof e->id, "%s", id);
        e->version = INT64_MIN;
    }
    if (version > e->version) {
        e->version = version;
        e->removed = removed;
        e->rev = rev;
    }
    pthread_mutex_unlock(&tt->mu);
}

void track_write(track *t, size_t tenant, const char *id, uint64_t rev, int64_t version)
{
    record(t, tenant, id, false, rev, version);
}

void track_remove(track *t, size_t tenant, const char *id, int64_t version)
{
    record(t, tenant, id, true, 0, version);
}

void track_uncertain(track *t, size_t tenant)
{
    if (tenant >= t->ntenants)
        return;
    pthread_mutex_lock(&t->t[tenant].mu);
    t->t[tenant].uncertain = true;
    pthread_mutex_unlock(&t->t[tenant].mu);
}

/* One section of a stored draft; id points into the parsed document. */
struct seen_section {
    const char *id;
    uint64_t rev;
};

static int cmp_section(const void *a, const void *b)
{
    return strcmp(((const struct seen_section *)a)->id, ((const struct seen_section *)b)->id);
}

/* Collect every section with a string id from draft.pages.*.sections into a
 * growing array (owned by the caller).  Returns the count, or -1 on OOM. */
static long collect(json_t *draft, struct seen_section **arr, size_t *cap)
{
    size_t n = 0;
    const char *pname;
    json_t *page;
    json_object_foreach(json_object_get(draft, "pages"), pname, page) {
        size_t i;
        json_t *sec;
        json_array_foreach(json_object_get(page, "sections"), i, sec) {
            const char *id = json_string_value(json_object_get(sec, "id"));
            if (id == NULL)
                continue;
            if (n == *cap) {
                size_t c = *cap ? *cap * 2 : 64;
                struct seen_section *a = realloc(*arr, c * sizeof *a);
                if (a == NULL)
                    return -1;
                *arr = a;
                *cap = c;
            }
            (*arr)[n].id = id;
            (*arr)[n].rev = rev_parse(json_string_value(json_object_get(sec, "rev")));
            n++;
        }
    }
    return (long)n;
}

/* Check one stored tenant; adds to res. */
static int check_tenant(track *t, size_t idx, const char *draft_text, int64_t version,
                        struct seen_section **arr, size_t *cap, track_result *res)
{
    json_error_t jerr;
    json_t *draft = json_loads(draft_text, 0, &jerr);
    if (draft == NULL) {
        fprintf(stderr, "tenantq-load: check: tenant %zu: draft is not JSON: %s\n", idx,
                jerr.text);
        return -1;
    }
    long n = collect(draft, arr, cap);
    if (n < 0) {
        json_decref(draft);
        fprintf(stderr, "tenantq-load: check: out of memory\n");
        return -1;
    }
    struct seen_section *s = *arr;
    qsort(s, (size_t)n, sizeof *s, cmp_section);
    bool dup = false;
    for (long i = 1; i < n; i++)
        if (strcmp(s[i].id, s[i - 1].id) == 0 && (i < 2 || strcmp(s[i - 1].id, s[i - 2].id) != 0)) {
            res->duplicate_ids++;
            dup = true;
        }
    res->tenants_with_duplicates += dup;

    struct tenant_track *tt = &t->t[idx];
    res->tenants_checked++;
    if (tt->uncertain) {
        res->tenants_uncertain++;
        json_decref(draft);
        return 0;
    }
    for (size_t k = 0; k < tt->n; k++) {
        const struct id_entry *e = &tt->ids[k];
        struct seen_section key = {.id = e->id};
        struct seen_section *hit = bsearch(&key, s, (size_t)n, sizeof *s, cmp_section);
        bool visible = false;
        if (hit != NULL) {
            /* a duplicated id: any copy carrying the rev shows the write */
            while (hit > s && strcmp(hit[-1].id, e->id) == 0)
                hit--;
            for (; hit < s + n && strcmp(hit->id, e->id) == 0; hit++)
                if (e->removed || hit->rev == e->rev)
                    visible = true;
        }
        if (e->removed ? visible : !visible)
            res->lost_acknowledged++;
    }
    int64_t expect = t->base_version + (int64_t)tt->acked;
    if (version < expect)
        res->version_deficit += (uint64_t)(expect - version);
    json_decref(draft);
    return 0;
}

int track_check(track *t, PGconn *conn, enum wl_table table, track_result *res)
{
    const char *sql = wl_check_sql(table);
    memset(res, 0, sizeof *res);
    bool *seen = calloc(t->ntenants ? t->ntenants : 1, sizeof *seen);
    struct seen_section *arr = NULL;
    size_t cap = 0;
    int rc = -1;
    if (seen == NULL)
        goto out;
    if (!PQsendQueryParams(conn, sql, 0, NULL, NULL, NULL, NULL, 0)) {
        fprintf(stderr, "tenantq-load: check: %s", PQerrorMessage(conn));
        goto out;
    }
    /* row by row: 10^4 drafts of several KiB need not be held at once */
    PQsetSingleRowMode(conn);
    rc = 0;
    PGresult *r;
    while ((r = PQgetResult(conn)) != NULL) {
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_SINGLE_TUPLE && rc == 0) {
            size_t idx;
            if (wl_tenant_index(PQgetvalue(r, 0, 0), &idx) == 0 && idx < t->ntenants &&
                !seen[idx]) {
                seen[idx] = true;
                int64_t version = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
                if (check_tenant(t, idx, PQgetvalue(r, 0, 1), version, &arr, &cap, res) != 0)
                    rc = -1;
            }
        } else if (st != PGRES_SINGLE_TUPLE && st != PGRES_TUPLES_OK) {
            fprintf(stderr, "tenantq-load: check: %s", PQresultErrorMessage(r));
            rc = -1;
        }
        PQclear(r);
    }
    if (rc != 0)
        goto out;
    /* a tracked tenant without a row lost everything acknowledged to it */
    for (size_t i = 0; i < t->ntenants; i++) {
        struct tenant_track *tt = &t->t[i];
        if (seen[i] || tt->acked == 0)
            continue;
        if (tt->uncertain) {
            res->tenants_uncertain++;
            continue;
        }
        for (size_t k = 0; k < tt->n; k++)
            res->lost_acknowledged += !tt->ids[k].removed;
        res->version_deficit += tt->acked;
    }
    res->passed = res->duplicate_ids == 0 && res->lost_acknowledged == 0 &&
                  res->version_deficit == 0;
out:
    free(arr);
    free(seen);
    return rc;
}
