/* The compiled RESP framer: finds where complete commands (from clients) and complete replies
 * (from nodes) end. Both are on the hot path of every command the gateway proxies, so they are
 * written in C; the pure-Python parser and framer in requests.py and framing.py stay the
 * reference and the fallback. RESP: https://redis.io/docs/latest/develop/reference/protocol-spec/
 *
 * Both functions take only what is unambiguous and stop at anything else, leaving it to the
 * Python code, which knows redis-server's wording for every error and the rare forms (inline
 * commands, RESP3 pushes and attributes). Neither allocates anything for a command or reply
 * until it is whole, so a declared count or length costs nothing before its bytes arrive.
 *
 * frame(buffer, max_count, max_length, factory) -> (commands, end, stopped)
 *   The canonical commands every client library sends ("*<count>\r\n" then count times
 *   "$<length>\r\n<bytes>\r\n", numbers in plain decimal with no sign or leading zero).
 *   commands: factory(args, raw) for every complete command with at least one argument
 *             ("*0\r\n" is skipped, as redis-server skips it), in order; args is a list of
 *             bytes, raw the command's own bytes.
 *   end:      the offset just past the last complete command (or skipped "*0").
 *   stopped:  True when the byte at end starts something the framer does not take (not
 *             canonical, a count or length over its limit, an inline command); False when
 *             end is the end of the buffer or the start of an incomplete command.
 *
 * scan_replies(buffer, start, limit, max_length, max_count, max_line, max_depth, resp3)
 *     -> (ends, errors)
 *   Up to limit complete replies from start: simple strings, errors, integers, bulk strings
 *   and arrays (and, with resp3, the RESP3 scalars, blob errors, verbatim strings, maps and
 *   sets), within the limits. ends: where each one ends (a list of offsets, in order), so a
 *   caller hands a whole read's replies out with one call; errors: how many of them are
 *   error replies ('-' or '!'), so that a caller judging a node by its answers reads the
 *   replies again only when one is. It stops at an incomplete reply and at anything else (a
 *   push, an attribute, a malformed header).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_LIMIT (1LL << 56)

/* How reading one "<digits>\r\n" number went. */
enum number { NUMBER_OK, NUMBER_INCOMPLETE, NUMBER_REFUSED };

/* Reads a canonical decimal ("0", or a nonzero digit then digits) ending in "\r\n", at most
 * max, from p (before end). On NUMBER_OK, *value holds it and *next points past the "\r\n". */
static enum number
read_number(const char *p, const char *end, long long max, long long *value, const char **next)
{
    long long v = 0;

    if (p >= end) {
        return NUMBER_INCOMPLETE;
    }
    if (*p == '0') {
        p++;
    }
    else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') {
            v = v * 10 + (*p - '0');
            if (v > max) {
                return NUMBER_REFUSED;
            }
            p++;
        }
    }
    else {
        return NUMBER_REFUSED;
    }
    if (p >= end) {
        return NUMBER_INCOMPLETE;
    }
    if (*p != '\r') {
        return NUMBER_REFUSED;
    }
    if (p + 1 >= end) {
        return NUMBER_INCOMPLETE;
    }
    if (p[1] != '\n') {
        return NUMBER_REFUSED;
    }
    *value = v;
    *next = p + 2;
    return NUMBER_OK;
}

/* What scanning one command found. */
enum scan { SCAN_COMPLETE, SCAN_INCOMPLETE, SCAN_STOPPED };

/* What a header number that did not read means for the command or reply it starts. */
static enum scan
scan_of(enum number got)
{
    return got == NUMBER_INCOMPLETE ? SCAN_INCOMPLETE : SCAN_STOPPED;
}

/* Checks that a whole command starts at p, without allocating: on SCAN_COMPLETE, *count is its
 * number of arguments, *args points at its first "$" and *next past its last "\r\n". */
static enum scan
scan_command(const char *p, const char *end, long long max_count, long long max_length,
             long long *count, const char **args, const char **next)
{
    const char *q;
    long long i;
    enum number got;

    if (*p != '*') {
        return SCAN_STOPPED;
    }
    got = read_number(p + 1, end, max_count, count, &q);
    if (got != NUMBER_OK) {
        return scan_of(got);
    }
    *args = q;
    for (i = 0; i < *count; i++) {
        long long length;
        const char *data;

        if (q >= end) {
            return SCAN_INCOMPLETE;
        }
        if (*q != '$') {
            return SCAN_STOPPED;
        }
        got = read_number(q + 1, end, max_length, &length, &data);
        if (got != NUMBER_OK) {
            return scan_of(got);
        }
        if (end - data < length + 2) {
            return SCAN_INCOMPLETE;
        }
        if (data[length] != '\r' || data[length + 1] != '\n') {
            return SCAN_STOPPED;
        }
        q = data + length + 2;
    }
    *next = q;
    return SCAN_COMPLETE;
}

/* The arguments of a command scan_command found complete, as a list of bytes. */
static PyObject *
arguments(const char *q, const char *end, long long count, long long max_length)
{
    PyObject *list = PyList_New((Py_ssize_t)count);
    long long i;

    if (list == NULL) {
        return NULL;
    }
    for (i = 0; i < count; i++) {
        long long length = 0;
        const char *data = q;
        PyObject *arg;

        read_number(q + 1, end, max_length, &length, &data);
        arg = PyBytes_FromStringAndSize(data, (Py_ssize_t)length);
        if (arg == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, arg);
        q = data + length + 2;
    }
    return list;
}

static PyObject *
frame(PyObject *Py_UNUSED(module), PyObject *const *argv, Py_ssize_t argc)
{
    Py_buffer view;
    long long max_count, max_length;
    PyObject *factory, *commands, *result = NULL;
    const char *start, *end, *p;
    int stopped = 0;

    if (argc != 4) {
        PyErr_SetString(PyExc_TypeError, "frame(buffer, max_count, max_length, factory)");
        return NULL;
    }
    max_count = PyLong_AsLongLong(argv[1]);
    if (max_count == -1 && PyErr_Occurred()) {
        return NULL;
    }
    max_length = PyLong_AsLongLong(argv[2]);
    if (max_length == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (max_count < 0 || max_length < 0) {
        PyErr_SetString(PyExc_ValueError, "limits must not be negative");
        return NULL;
    }
    /* Keeps the arithmetic below (v * 10 + 9, length + 2) far from overflowing; no buffer
     * comes near that size. */
    if (max_count > MAX_LIMIT) {
        max_count = MAX_LIMIT;
    }
    if (max_length > MAX_LIMIT) {
        max_length = MAX_LIMIT;
    }
    factory = argv[3];
    if (PyObject_GetBuffer(argv[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    commands = PyList_New(0);
    if (commands == NULL) {
        goto done;
    }
    start = (const char *)view.buf;
    end = start + view.len;
    p = start;
    while (p < end) {
        long long count = 0;
        const char *args = NULL, *next = NULL;
        enum scan found = scan_command(p, end, max_count, max_length, &count, &args, &next);

        if (found == SCAN_STOPPED) {
            stopped = 1;
            break;
        }
        if (found == SCAN_INCOMPLETE) {
            break;
        }
        if (count > 0) {
            PyObject *call[2], *command;
            int failed;

            call[0] = arguments(args, end, count, max_length);
            if (call[0] == NULL) {
                goto fail;
            }
            call[1] = PyBytes_FromStringAndSize(p, (Py_ssize_t)(next - p));
            if (call[1] == NULL) {
                Py_DECREF(call[0]);
                goto fail;
            }
            command = PyObject_Vectorcall(factory, call, 2, NULL);
            Py_DECREF(call[0]);
            Py_DECREF(call[1]);
            if (command == NULL) {
                goto fail;
            }
            failed = PyList_Append(commands, command);
            Py_DECREF(command);
            if (failed < 0) {
                goto fail;
            }
        }
        p = next;
    }
    result = Py_BuildValue("(NnO)", commands, (Py_ssize_t)(p - start),
                           stopped ? Py_True : Py_False);
    goto done;
fail:
    Py_DECREF(commands);
done:
    PyBuffer_Release(&view);
    return result;
}

/* Replies ------------------------------------------------------------------------------- */

/* Open aggregates scan_replies follows at most (deeper replies are left to Python). */
#define MAX_NESTING 64

/* Reads a bulk length or aggregate count: canonical decimal at most max, or "-1" when
 * allowed; same results as read_number. */
static enum number
read_length(const char *p, const char *end, long long max, int minus_one, long long *value,
            const char **next)
{
    if (p < end && *p == '-') {
        if (!minus_one) {
            return NUMBER_REFUSED;
        }
        if (end - p < 4) {
            return (end - p >= 2 && p[1] != '1') ? NUMBER_REFUSED : NUMBER_INCOMPLETE;
        }
        if (p[1] != '1' || p[2] != '\r' || p[3] != '\n') {
            return NUMBER_REFUSED;
        }
        *value = -1;
        *next = p + 4;
        return NUMBER_OK;
    }
    return read_number(p, end, max, value, next);
}

/* The end of the line starting at p (past its "\r\n"), NULL if incomplete; *too_long when no
 * line of at most max bytes can end there. */
static const char *
line_end(const char *p, const char *end, long long max, int *too_long)
{
    const char *q = p;

    *too_long = 0;
    while (q < end) {
        const char *cr = memchr(q, '\r', (size_t)(end - q));

        if (cr == NULL || cr + 1 >= end) {
            break;
        }
        if (cr[1] == '\n') {
            if (cr - p > max) {
                *too_long = 1;
                return NULL;
            }
            return cr + 2;
        }
        q = cr + 1;
    }
    if (end - p > max + 2) {
        *too_long = 1;
    }
    return NULL;
}

static enum scan
scan_reply_at(const char *p, const char *end, long long max_length, long long max_count,
              long long max_line, int max_depth, int resp3, const char **next)
{
    long long remaining[MAX_NESTING];
    int depth = 0;

    if (max_depth > MAX_NESTING) {
        max_depth = MAX_NESTING;
    }
    for (;;) {
        const char *q;
        long long n;
        enum number got;
        char kind;

        if (p >= end) {
            return SCAN_INCOMPLETE;
        }
        kind = *p;
        switch (kind) {
        case '+':
        case '-':
        case ':':
        case '_':
        case ',':
        case '#':
        case '(': {
            int too_long;

            if (!resp3 && kind != '+' && kind != '-' && kind != ':') {
                return SCAN_STOPPED;
            }
            q = line_end(p + 1, end, max_line, &too_long);
            if (q == NULL) {
                return too_long ? SCAN_STOPPED : SCAN_INCOMPLETE;
            }
            p = q;
            break;
        }
        case '$':
        case '!':
        case '=': {
            const char *data;

            if (!resp3 && kind != '$') {
                return SCAN_STOPPED;
            }
            got = read_length(p + 1, end, max_length, kind == '$', &n, &data);
            if (got != NUMBER_OK) {
                return scan_of(got);
            }
            if (n < 0) {
                p = data; /* the RESP2 null bulk string */
                break;
            }
            if (end - data < n + 2) {
                return SCAN_INCOMPLETE;
            }
            if (data[n] != '\r' || data[n + 1] != '\n') {
                return SCAN_STOPPED;
            }
            if (kind == '=' && (n < 4 || data[3] != ':')) {
                return SCAN_STOPPED;
            }
            p = data + n + 2;
            break;
        }
        case '*':
        case '%':
        case '~':
            if (!resp3 && kind != '*') {
                return SCAN_STOPPED;
            }
            got = read_length(p + 1, end, max_count, kind == '*', &n, &q);
            if (got != NUMBER_OK) {
                return scan_of(got);
            }
            p = q;
            if (n > 0) {
                if (depth >= max_depth) {
                    return SCAN_STOPPED;
                }
                remaining[depth++] = kind == '%' ? 2 * n : n;
                continue; /* its elements follow */
            }
            break; /* empty or null: complete */
        default:
            return SCAN_STOPPED;
        }
        /* One element is complete: close every aggregate it completes. */
        while (depth > 0 && --remaining[depth - 1] == 0) {
            depth--;
        }
        if (depth == 0) {
            *next = p;
            return SCAN_COMPLETE;
        }
    }
}

static PyObject *
scan_replies(PyObject *Py_UNUSED(module), PyObject *const *argv, Py_ssize_t argc)
{
    Py_buffer view;
    Py_ssize_t start, limit, count = 0, errors = 0;
    PyObject *ends;
    long long max_length, max_count, max_line, max_depth;
    int resp3;
    const char *p, *end;

    if (argc != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "scan_replies(buffer, start, limit, max_length, max_count, max_line, "
                        "max_depth, resp3)");
        return NULL;
    }
    start = PyLong_AsSsize_t(argv[1]);
    limit = PyLong_AsSsize_t(argv[2]);
    max_length = PyLong_AsLongLong(argv[3]);
    max_count = PyLong_AsLongLong(argv[4]);
    max_line = PyLong_AsLongLong(argv[5]);
    max_depth = PyLong_AsLongLong(argv[6]);
    resp3 = PyObject_IsTrue(argv[7]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (start < 0 || limit < 0 || max_length < 0 || max_count < 0 || max_line < 0 ||
        max_depth < 0) {
        PyErr_SetString(PyExc_ValueError, "offsets and limits must not be negative");
        return NULL;
    }
    if (max_length > MAX_LIMIT) {
        max_length = MAX_LIMIT;
    }
    if (max_count > MAX_LIMIT / 2) {
        max_count = MAX_LIMIT / 2;
    }
    if (max_line > MAX_LIMIT) {
        max_line = MAX_LIMIT;
    }
    if (max_depth > MAX_NESTING) {
        max_depth = MAX_NESTING;
    }
    if (PyObject_GetBuffer(argv[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (start > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start is past the end of the buffer");
        return NULL;
    }
    ends = PyList_New(0);
    if (ends == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    p = (const char *)view.buf + start;
    end = (const char *)view.buf + view.len;
    while (count < limit) {
        const char *next = NULL;
        PyObject *offset;
        int failed;

        if (scan_reply_at(p, end, max_length, max_count, max_line, (int)max_depth, resp3,
                          &next) != SCAN_COMPLETE) {
            break;
        }
        if (*p == '-' || *p == '!') {
            errors++;
        }
        p = next;
        count++;
        offset = PyLong_FromSsize_t((Py_ssize_t)(p - (const char *)view.buf));
        if (offset == NULL) {
            Py_DECREF(ends);
            PyBuffer_Release(&view);
            return NULL;
        }
        failed = PyList_Append(ends, offset);
        Py_DECREF(offset);
        if (failed < 0) {
            Py_DECREF(ends);
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nn)", ends, errors);
}

static PyMethodDef framer_methods[] = {
    {"frame", (PyCFunction)(void (*)(void))frame, METH_FASTCALL,
     "frame(buffer, max_count, max_length, factory) -> (commands, end, stopped)\n\n"
     "The complete canonical RESP commands at the start of buffer."},
    {"scan_replies", (PyCFunction)(void (*)(void))scan_replies, METH_FASTCALL,
     "scan_replies(buffer, start, limit, max_length, max_count, max_line, max_depth, resp3)"
     " -> (ends, errors)\n\nWhere each of up to limit complete replies from start ends."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef framer_module = {
    PyModuleDef_HEAD_INIT,
    "_framer",
    "The compiled RESP framer (see resmesh.protocols.resp.requests and .framing).",
    0,
    framer_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__framer(void)
{
    return PyModule_Create(&framer_module);
}
