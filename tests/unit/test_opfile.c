/*
 * test_opfile.c - the op-file parser (daemon/opfile.h): what is and is not a
 * parameter (literals, E'' escapes, quoted identifiers, nested comments,
 * dollar quotes, casts), the rewritten SQL, repeated names, one statement per
 * file, the first word, options and their checks, every limit, line numbers
 * in messages, hostile bytes, and the shipped examples (TQ_EXAMPLES_DIR).
 * Every input is handed over in a buffer of exactly its length, without a
 * NUL, so a read past the end shows under ASan.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "opfile.h"

/* Parse text (its strlen bytes, copied to a buffer without NUL). */
static opfile_def *parse(const char *text, char *err)
{
    size_t n = strlen(text);
    char *buf = malloc(n ? n : 1);
    memcpy(buf, text, n);
    opfile_def *def = opfile_parse("t.sql", buf, n, err, OPFILE_ERR_MAX);
    free(buf);
    return def;
}

/* text must parse to sql with the given parameter names (NULL-terminated). */
static opfile_def *ok_(int line, const char *text, const char *sql, ...)
{
    char err[OPFILE_ERR_MAX];
    opfile_def *def = parse(text, err);
    CHECK(def != NULL, "line %d: refused: %s", line, err);
    if (def == NULL)
        return NULL;
    CHECK(strcmp(def->sql, sql) == 0, "line %d: sql [%s], want [%s]", line, def->sql, sql);
    CHECK(def->sql_len == strlen(def->sql), "line %d: sql_len", line);
    va_list ap;
    va_start(ap, sql);
    size_t k = 0;
    int tenant = -1;
    for (const char *name; (name = va_arg(ap, const char *)) != NULL; k++) {
        CHECK(k < def->nparams && strcmp(def->params[k], name) == 0, "line %d: param %zu is %s, want %s",
              line, k, k < def->nparams ? def->params[k] : "(none)", name);
        if (strcmp(name, "tenant") == 0)
            tenant = (int)k;
    }
    va_end(ap);
    CHECK(def->nparams == k, "line %d: %zu params, want %zu", line, def->nparams, k);
    CHECK(def->tenant_index == tenant, "line %d: tenant_index %d, want %d", line,
          def->tenant_index, tenant);
    return def;
}
#define OK(...) opfile_free(ok_(__LINE__, __VA_ARGS__, NULL))

/* text must be refused with a message that contains want ("t.sql:N: ..."). */
static void bad_(int line, const char *text, const char *want)
{
    char err[OPFILE_ERR_MAX];
    opfile_def *def = parse(text, err);
    CHECK(def == NULL, "line %d: accepted, sql [%s]", line, def ? def->sql : "");
    CHECK(def != NULL || strstr(err, want) != NULL, "line %d: message [%s], want [%s]", line, err,
          want);
    CHECK(def != NULL || strncmp(err, "t.sql:", 6) == 0, "line %d: no file name: [%s]", line, err);
    CHECK(strchr(err, '\n') == NULL, "line %d: message has a newline", line);
    opfile_free(def);
}
#define BAD(text, want) bad_(__LINE__, text, want)

static void test_spec_example(void)
{
    char err[OPFILE_ERR_MAX];
    opfile_def *def = parse(
        "-- reject_if_empty: that slot is already booked\n"
        "INSERT INTO booking (tenant_id, slot, customer)\n"
        "SELECT :tenant, :slot::timestamptz, :customer\n"
        "WHERE NOT EXISTS (SELECT 1 FROM booking WHERE tenant_id = :tenant AND slot = "
        ":slot::timestamptz)\n"
        "RETURNING id, slot\n",
        err);
    CHECK(def != NULL, "spec example refused: %s", err);
    if (def == NULL)
        return;
    CHECK(strcmp(def->sql, "INSERT INTO booking (tenant_id, slot, customer)\n"
                           "SELECT $1, $2::timestamptz, $3\n"
                           "WHERE NOT EXISTS (SELECT 1 FROM booking WHERE tenant_id = $1 AND "
                           "slot = $2::timestamptz)\n"
                           "RETURNING id, slot") == 0,
          "sql [%s]", def->sql);
    CHECK(def->nparams == 3 && strcmp(def->params[0], "tenant") == 0 &&
              strcmp(def->params[1], "slot") == 0 && strcmp(def->params[2], "customer") == 0,
          "params");
    CHECK(def->tenant_index == 0, "tenant_index %d", def->tenant_index);
    CHECK(def->reject_if_empty && strcmp(def->reject_if_empty, "that slot is already booked") == 0,
          "reject_if_empty [%s]", def->reject_if_empty ? def->reject_if_empty : "(null)");
    CHECK(def->lock_key_sql == NULL, "lock_key set");
    CHECK(def->name == NULL, "name set by the parser");
    opfile_free(def);
}

static void test_not_parameters(void)
{
    /* casts */
    OK("SELECT :a::int, x::text, :b :: int", "SELECT $1::int, x::text, $2 :: int", "a", "b");
    OK("SELECT x:::a", "SELECT x::$1", "a");
    /* string literals, '' inside, a backslash is plain in '...' */
    OK("SELECT ':no', 'it''s :no', :yes", "SELECT ':no', 'it''s :no', $1", "yes");
    OK("SELECT '\\', :yes", "SELECT '\\', $1", "yes");
    OK("SELECT '', :yes, ''''", "SELECT '', $1, ''''", "yes");
    /* E'...': backslash escapes, also '' */
    OK("SELECT E'\\' :no', :yes", "SELECT E'\\' :no', $1", "yes");
    OK("SELECT e'\\\\', :yes", "SELECT e'\\\\', $1", "yes");
    OK("SELECT E'a''b :no \\\\', :yes", "SELECT E'a''b :no \\\\', $1", "yes");
    /* '' is a quote inside E'...', so the \' after it is escaped too */
    OK("SELECT E'a''\\' :no', :yes", "SELECT E'a''\\' :no', $1", "yes");
    /* an identifier ending in e is no E prefix: 'x\' is a whole string */
    OK("SELECT somee'\\', :yes", "SELECT somee'\\', $1", "yes");
    /* other prefixes follow the standard rules */
    OK("SELECT U&'d\\0061t :no', B'01', X'ff', N':no', :yes",
       "SELECT U&'d\\0061t :no', B'01', X'ff', N':no', $1", "yes");
    /* quoted identifiers with "" inside */
    OK("SELECT \"a:no\", \"x\"\":no\", U&\":no\", :yes",
       "SELECT \"a:no\", \"x\"\":no\", U&\":no\", $1", "yes");
    /* line comments and nested block comments */
    OK("SELECT 1 -- :no\n, :yes", "SELECT 1 -- :no\n, $1", "yes");
    OK("SELECT /* :no /* nested :no */ still :no */ :yes",
       "SELECT /* :no /* nested :no */ still :no */ $1", "yes");
    OK("SELECT 1 /* -- :no */ + :yes", "SELECT 1 /* -- :no */ + $1", "yes");
    /* dollar quotes, empty and tagged; an inner $$ does not close $fn$ */
    OK("SELECT $$ :no ' \" $$, :yes", "SELECT $$ :no ' \" $$, $1", "yes");
    OK("SELECT $fn$ :no $$ :no $f$ :no $fn$, :yes", "SELECT $fn$ :no $$ :no $f$ :no $fn$, $1",
       "yes");
    OK("SELECT $_1$:no$_1$::text, :yes", "SELECT $_1$:no$_1$::text, $1", "yes");
    /* '$' inside an identifier is no dollar quote */
    OK("SELECT a$b, c$$d, :yes", "SELECT a$b, c$$d, $1", "yes");
    /* ':' before anything but a name */
    OK("SELECT f(x := 1), a[1 : 2], :yes", "SELECT f(x := 1), a[1 : 2], $1", "yes");
    OK("SELECT a[1:2], :yes", "SELECT a[1:2], $1", "yes");
    /* a comment mentioning lock_key inside the statement is just a comment */
    OK("SELECT 1\n-- lock_key: nonsense\n, :yes", "SELECT 1\n-- lock_key: nonsense\n, $1", "yes");
}

static void test_parameters(void)
{
    /* repeated names bind once, in order of first appearance */
    OK("SELECT :b, :a, :b, :tenant, :a", "SELECT $1, $2, $1, $3, $2", "b", "a", "tenant");
    /* names are case-sensitive: :Tenant is an argument */
    OK("SELECT :Tenant, :tenant", "SELECT $1, $2", "Tenant", "tenant");
    OK("SELECT :_x1, :x_2_", "SELECT $1, $2", "_x1", "x_2_");
    /* no :tenant at all */
    OK("SELECT :a", "SELECT $1", "a");
    /* text that would run into the placeholder gets a space */
    OK("SELECT x:a, 1:b, (:c)", "SELECT x $1, 1 $2, ($3)", "a", "b", "c");
    OK("SELECT a[1:n]", "SELECT a[1 $1]", "n");
    OK("SELECT :a||:b", "SELECT $1||$2", "a", "b");
    /* the longest name */
    char text[200];
    snprintf(text, sizeof text, "SELECT :%.*s", OPFILE_NAME_MAX,
             "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij");
    OK(text, "SELECT $1", text + 8);
    snprintf(text, sizeof text, "SELECT\n:%.*s", OPFILE_NAME_MAX + 1,
             "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij");
    BAD(text, "t.sql:2: parameter :abcdefghij");
    BAD(text, "is longer than 63 bytes");
    /* OPFILE_MAX_PARAMS distinct names, then one more */
    char *big = malloc(OPFILE_MAX_PARAMS * 16 + 64);
    char *want = malloc(OPFILE_MAX_PARAMS * 16 + 64);
    size_t n = (size_t)sprintf(big, "SELECT 0"), m = (size_t)sprintf(want, "SELECT 0");
    for (int k = 0; k < OPFILE_MAX_PARAMS; k++) {
        n += (size_t)sprintf(big + n, ",:p%d", k);
        m += (size_t)sprintf(want + m, ",$%d", k + 1);
    }
    char err[OPFILE_ERR_MAX];
    opfile_def *def = parse(big, err);
    CHECK(def && def->nparams == OPFILE_MAX_PARAMS && strcmp(def->sql, want) == 0,
          "%d params: %s", OPFILE_MAX_PARAMS, def ? def->sql : err);
    CHECK(def && strcmp(def->params[OPFILE_MAX_PARAMS - 1], "p63") == 0, "last name");
    opfile_free(def);
    sprintf(big + n, ",\n:p0,:one_more");
    BAD(big, "t.sql:2: more than 64 distinct parameters");
    free(big);
    free(want);
    /* non-ASCII after ':' or in a name */
    BAD("SELECT :\xc3\xa9t\xc3\xa9", "t.sql:1: ':' followed by a non-ASCII character");
    BAD("SELECT :caf\xc3\xa9", "parameter :caf runs into");
    BAD("SELECT :a$b", "parameter :a runs into '$'");
    /* positional parameters */
    BAD("SELECT 1,\n$1", "t.sql:2: positional parameter $1: name the parameters");
    BAD("SELECT $12", "positional parameter $12");
    CHECK(opfile_valid_param("a_1", 3) && opfile_valid_param("_", 1), "valid names");
    CHECK(!opfile_valid_param("1a", 2) && !opfile_valid_param("", 0) &&
              !opfile_valid_param("a-b", 3) && !opfile_valid_param(NULL, 0),
          "invalid names");
}

static void test_statement(void)
{
    /* the first word, any case, after comments */
    OK("select 1", "select 1");
    OK("/* c */ -- c\n  WITH x AS (SELECT 1) SELECT * FROM x",
       "WITH x AS (SELECT 1) SELECT * FROM x");
    OK("InSeRt INTO t VALUES (:a)", "InSeRt INTO t VALUES ($1)", "a");
    OK("UPDATE t SET a = :a", "UPDATE t SET a = $1", "a");
    OK("delete from t where id = :id returning id", "delete from t where id = $1 returning id",
       "id");
    BAD("CREATE TABLE t (a int)", "t.sql:1: the statement must start with SELECT, INSERT, UPDATE, "
                                  "DELETE or WITH, not 'CREATE'");
    BAD("\n\n(SELECT 1)", "t.sql:3: the statement must start with");
    BAD("SELECTx 1", "not 'SELECTx'");
    BAD("DROP TABLE booking; SELECT 1", "not 'DROP'");
    BAD("VACUUM", "not 'VACUUM'");
    /* trailing ';' and whatever blank follows it is dropped */
    OK("SELECT 1;", "SELECT 1");
    OK("SELECT 1 ; -- done\n/* really */\n\n", "SELECT 1");
    OK("SELECT 1 -- trailing comment", "SELECT 1");
    OK("SELECT 1\n/* trailing */\n", "SELECT 1");
    OK("SELECT ';', $$;$$, \";\" -- ;\n", "SELECT ';', $$;$$, \";\"");
    /* one statement only */
    BAD("SELECT 1;\nSELECT 2", "t.sql:2: only one statement per file");
    BAD("SELECT 1;;", "only one statement per file");
    BAD("SELECT 1; DELETE FROM t", "t.sql:1: only one statement per file");
    /* nothing there */
    BAD("", "t.sql:1: no SQL statement in the file");
    BAD("  -- only a comment\n/* and another */\n", "t.sql:3: no SQL statement");
    BAD("-- reject_if_empty: x\n", "no SQL statement");
}

static void test_unterminated(void)
{
    BAD("SELECT 1,\n'abc\n\n", "t.sql:2: unterminated string literal (opened here)");
    BAD("SELECT E'abc\\'", "t.sql:1: unterminated string literal");
    BAD("SELECT 'it''", "unterminated string literal");
    BAD("SELECT\n\"abc", "t.sql:2: unterminated quoted identifier");
    BAD("SELECT 1 /* a /* b */ c", "t.sql:1: unterminated /* comment");
    BAD("/* x", "t.sql:1: unterminated /* comment");
    BAD("SELECT\n\n$fn$ body $f$ $fn", "t.sql:3: unterminated dollar-quoted string $fn$");
    BAD("SELECT $$", "unterminated dollar-quoted string $$");
}

static void test_options(void)
{
    char err[OPFILE_ERR_MAX];
    opfile_def *def =
        parse("-- Books a slot. Note: prose is fine.\n"
              "-- reject_if_empty:   no such booking  \r\n"
              "/* a block comment */\n"
              "--lock_key: hashtextextended('booking:' || $1, 0)\n"
              "DELETE FROM booking WHERE tenant_id = :tenant AND id = :id::bigint RETURNING id\n",
              err);
    CHECK(def != NULL, "options refused: %s", err);
    if (def) {
        CHECK(def->reject_if_empty && strcmp(def->reject_if_empty, "no such booking") == 0,
              "reject_if_empty [%s]", def->reject_if_empty ? def->reject_if_empty : "(null)");
        CHECK(def->lock_key_sql &&
                  strcmp(def->lock_key_sql, "hashtextextended('booking:' || $1, 0)") == 0,
              "lock_key [%s]", def->lock_key_sql ? def->lock_key_sql : "(null)");
        CHECK(strcmp(def->sql, "DELETE FROM booking WHERE tenant_id = $1 AND id = $2::bigint "
                               "RETURNING id") == 0,
              "sql [%s]", def->sql);
    }
    opfile_free(def);
    OK("-- Note: a prose comment\n-- and this: too, the word has a space before ':'\nSELECT 1",
       "SELECT 1");
    BAD("-- url: no, this is one\nSELECT 1", "t.sql:1: unknown option 'url'");
    OK("-- https://example.com/booking is a URL, not an option\nSELECT 1", "SELECT 1");
    BAD("\n-- rejet_if_empty: typo\nSELECT 1", "t.sql:2: unknown option 'rejet_if_empty'");
    BAD("-- Reject_If_Empty: x\nSELECT 1", "option Reject_If_Empty: options are written in lower");
    BAD("-- reject_if_empty: a\n-- reject_if_empty: b\nSELECT 1",
        "t.sql:2: option reject_if_empty given twice");
    BAD("-- reject_if_empty:\nSELECT 1", "t.sql:1: option reject_if_empty needs a value");
    BAD("-- reject_if_empty:  \t \nSELECT 1", "needs a value");
    BAD("-- reject_if_empty: a\tb\nSELECT 1", "the message contains a control character");
    BAD("-- reject_if_empty: a\x1b[31mred\nSELECT 1", "control character");
    char text[OPFILE_MESSAGE_MAX + 64];
    int n = snprintf(text, sizeof text, "-- reject_if_empty: ");
    memset(text + n, 'x', OPFILE_MESSAGE_MAX);
    snprintf(text + n + OPFILE_MESSAGE_MAX, sizeof text - (size_t)n - OPFILE_MESSAGE_MAX,
             "\nSELECT 1");
    OK(text, "SELECT 1");
    memset(text + n, 'x', OPFILE_MESSAGE_MAX + 1);
    snprintf(text + n + OPFILE_MESSAGE_MAX + 1, sizeof text - (size_t)n - OPFILE_MESSAGE_MAX - 1,
             "\nSELECT 1");
    BAD(text, "the message is longer than 256 bytes");
    /* lock_key: an expression over $1 and nothing that could escape it */
    OK("-- lock_key: $1::bigint\nSELECT 1", "SELECT 1");
    OK("-- lock_key: hashtext($$:x;$$ || $1)\nSELECT 1", "SELECT 1");
    BAD("-- lock_key: 42\nSELECT 1", "t.sql:1: lock_key: the expression must use $1");
    BAD("-- lock_key: '$1'\nSELECT 1", "must use $1");
    BAD("-- lock_key: $2\nSELECT 1", "lock_key: $2: the expression may use only $1");
    BAD("-- lock_key: $10\nSELECT 1", "lock_key: $10");
    BAD("-- lock_key: hashtext($1) /* x */\nSELECT 1", "lock_key: no comments");
    BAD("-- lock_key: hashtext($1) -- x\nSELECT 1", "lock_key: no comments");
    BAD("-- lock_key: hashtext($1)); DROP TABLE t; --\nSELECT 1", "lock_key: no ';'");
    BAD("-- lock_key: hashtext(:tenant)\nSELECT 1", "lock_key: no :tenant parameter here");
    BAD("-- lock_key: hashtext('$1)\nSELECT 1", "t.sql:1: unterminated string literal");
    /* options after the statement has started are comments */
    OK("SELECT 1\n-- reject_if_empty: ignored", "SELECT 1");
}

static void test_hostile_bytes(void)
{
    char err[OPFILE_ERR_MAX];
    static const char nul[] = "SELECT 1,\n'a\0b'";
    opfile_def *def = opfile_parse("t.sql", nul, sizeof nul - 1, err, sizeof err);
    CHECK(def == NULL && strstr(err, "t.sql:2: NUL byte") != NULL, "NUL: %s", err);
    opfile_free(def);
    BAD("SELECT 1,\n\n'\xff'", "t.sql:3: not valid UTF-8");
    BAD("SELECT '\xc0\xaf'", "not valid UTF-8");        /* overlong */
    BAD("SELECT '\xed\xa0\x80'", "not valid UTF-8");    /* surrogate */
    BAD("\x01SELECT 1", "not '?'");
    /* the size limit */
    char *big = malloc(OPFILE_MAX_BYTES + 1);
    memset(big, ' ', OPFILE_MAX_BYTES + 1);
    memcpy(big, "SELECT 1", 8);
    def = opfile_parse("t.sql", big, OPFILE_MAX_BYTES, err, sizeof err);
    CHECK(def != NULL && strcmp(def->sql, "SELECT 1") == 0, "64 KiB file: %s", def ? "" : err);
    opfile_free(def);
    def = opfile_parse("t.sql", big, OPFILE_MAX_BYTES + 1, err, sizeof err);
    CHECK(def == NULL && strstr(err, "larger than 65536 bytes") != NULL, "too big: %s", err);
    opfile_free(def);
    free(big);
    /* a tiny error buffer is cut, never overrun; none at all is fine */
    char small[12];
    def = opfile_parse("booking.create.sql", "CREATE", 6, small, sizeof small);
    CHECK(def == NULL && strlen(small) == sizeof small - 1, "small buffer [%s]", small);
    def = opfile_parse("t.sql", "CREATE", 6, NULL, 0);
    CHECK(def == NULL, "no buffer");
    /* a long word in a message is cut on a character boundary */
    BAD("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
        "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9 1",
        "not '\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
        "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9...'");
    /* line numbers count every newline before the problem, also in spans */
    BAD("SELECT '\n\n', $$\n$$, /*\n*/ \"\n\"\n, 1; x", "t.sql:7: only one statement");
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = malloc(OPFILE_MAX_BYTES + 1);
    *len = fread(buf, 1, OPFILE_MAX_BYTES + 1, f);
    fclose(f);
    return buf;
}

/* The examples shipped with the sources parse and have the documented shape. */
static void test_examples(void)
{
    static const struct {
        const char *file;
        const char *args;  /* the arguments, in order, after tenant */
        bool rejects;
    } ex[] = {
        {"booking.create.sql", "slot customer", true},
        {"booking.cancel.sql", "id", true},
        {"booking.list.sql", "from until", false},
    };
    for (size_t k = 0; k < sizeof ex / sizeof ex[0]; k++) {
        char path[1024], err[OPFILE_ERR_MAX];
        snprintf(path, sizeof path, "%s/%s", TQ_EXAMPLES_DIR, ex[k].file);
        size_t len = 0;
        char *text = slurp(path, &len);
        CHECK(text != NULL, "cannot read %s", path);
        if (text == NULL)
            continue;
        opfile_def *def = opfile_parse(ex[k].file, text, len, err, sizeof err);
        free(text);
        CHECK(def != NULL, "%s", err);
        if (def == NULL)
            continue;
        char names[256] = "";
        for (size_t p = 0; p < def->nparams; p++)
            if ((int)p != def->tenant_index)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s",
                         names[0] ? " " : "", def->params[p]);
        CHECK(def->tenant_index == 0, "%s: :tenant is not the first parameter", ex[k].file);
        CHECK(strcmp(names, ex[k].args) == 0, "%s: args [%s], want [%s]", ex[k].file, names,
              ex[k].args);
        CHECK((def->reject_if_empty != NULL) == ex[k].rejects, "%s: reject_if_empty", ex[k].file);
        opfile_free(def);
    }
}

int main(void)
{
    test_spec_example();
    test_not_parameters();
    test_parameters();
    test_statement();
    test_unterminated();
    test_options();
    test_hostile_bytes();
    test_examples();
    printf("test_opfile: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
