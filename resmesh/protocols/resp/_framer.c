/* The compiled request framer: finds the complete RESP commands at the start of a client's
 * bytes. It is the hot path of every Redis command the gateway proxies, so it is written in C;
 * the pure-Python parser in requests.py stays the reference and the fallback.
 *
 * It takes only the canonical form every client library sends (RESP's "multi bulk" request:
 * "*<count>\r\n" then count times "$<length>\r\n<bytes>\r\n", numbers in plain decimal with no
 * sign or leading zero; https://redis.io/docs/latest/develop/reference/protocol-spec/) and
 * stops at the first byte that is anything else, leaving it to the pure parser, which knows
 * redis-server's wording for every error. It allocates nothing for a command until the whole
 * command is in the buffer, so a declared count or length costs nothing before its bytes
 * arrive.
 *
 * frame(buffer, max_count, max_length, factory) -> (commands, end, stopped)
 *   commands: factory(args, raw) for every complete command with at least one argument
 *             ("*0\r\n" is skipped, as redis-server skips it), in order; args is a list of
 *             bytes, raw the command's own bytes.
 *   end:      the offset just past the last complete command (or skipped "*0").
 *   stopped:  True when the byte at end starts something the framer does not take (not
 *             canonical, a count or length over its limit, an inline command); False when
 *             end is the end of the buffer or the start of an incomplete command.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

/* Checks that a whole command starts at p, without allocating: on SCAN_COMPLETE, *count is its
 * number of arguments, *args points at its first "$" and *next past its last "\r\n". */
static enum scan
scan_command(const char *p, const char *end, long long max_count, long long max_length,
             long long *count, const char **args, const char **next)
{
    const char *q;
    long long i;

    if (*p != '*') {
        return SCAN_STOPPED;
    }
    switch (read_number(p + 1, end, max_count, count, &q)) {
    case NUMBER_INCOMPLETE:
        return SCAN_INCOMPLETE;
    case NUMBER_REFUSED:
        return SCAN_STOPPED;
    case NUMBER_OK:
        break;
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
        switch (read_number(q + 1, end, max_length, &length, &data)) {
        case NUMBER_INCOMPLETE:
            return SCAN_INCOMPLETE;
        case NUMBER_REFUSED:
            return SCAN_STOPPED;
        case NUMBER_OK:
            break;
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

static PyMethodDef framer_methods[] = {
    {"frame", (PyCFunction)(void (*)(void))frame, METH_FASTCALL,
     "frame(buffer, max_count, max_length, factory) -> (commands, end, stopped)\n\n"
     "The complete canonical RESP commands at the start of buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef framer_module = {
    PyModuleDef_HEAD_INIT,
    "_framer",
    "The compiled RESP request framer (see resmesh.protocols.resp.requests).",
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
