/*
 * The custodian's line parser: one JSON line from a kernel, parsed whole by
 * simdjson (grammar, UTF-8, escapes, numbers), and the fields it claims of
 * itself read out as Python's json module would read them (of duplicate keys,
 * the last).  record_protocol.check_lines judges them.
 *
 * Why: the supervisor holds the custodian, and the library it otherwise
 * parses with (msgspec) costs its process about 3 MB of imports; this costs a
 * few pages, and is faster per line.
 *
 * What it cannot do: it answers only where it reads the line exactly as
 * Python does.  Anything else -- any parse error, a claimed field that is a
 * float, an integer beyond 64 bits, a list or object (the chain object
 * aside), a string that is not valid UTF-8 once unescaped, a missing or
 * non-object "event" or "kernel_guard" (or any copy of one that is not an
 * object: msgspec refuses what json would overwrite), nesting deeper than
 * DEEPEST, a line longer than LONGEST -- gives None, and the Python path
 * decides (and names the reason).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstring>
#include <new>
#include <simdjson.h>

using simdjson::dom::element;
using simdjson::dom::element_type;
using simdjson::dom::object;

/* Longer lines go to the Python path: the parser keeps buffers sized to the
 * longest document it has seen, and the supervisor's memory must stay flat. */
static const size_t LONGEST = 64 * 1024;
/* Deeper lines go to the Python path too: its readers' own limits (about a
 * thousand levels, each its own) are not simdjson's; no event nests past a few. */
static const size_t DEEPEST = 64;

static simdjson::dom::parser *parser;
static char *padded; /* the line, then SIMDJSON_PADDING zero bytes */

/* A claimed scalar as a new reference; NULL (no exception set) where the
 * Python path must decide. */
static PyObject *scalar(element value)
{
    switch (value.type()) {
    case element_type::STRING: {
        std::string_view text = value.get_string().value_unsafe();
        PyObject *str = PyUnicode_DecodeUTF8(text.data(), (Py_ssize_t)text.size(), "strict");
        if (str == NULL)
            PyErr_Clear(); /* a lone surrogate, say: Python's reading decides */
        return str;
    }
    case element_type::INT64:
        return PyLong_FromLongLong(value.get_int64().value_unsafe());
    case element_type::BOOL:
        return PyBool_FromLong(value.get_bool().value_unsafe());
    case element_type::NULL_VALUE:
        Py_RETURN_NONE;
    default: /* UINT64 beyond int64, DOUBLE, ARRAY, OBJECT */
        return NULL;
    }
}

/* The last value of key in obj; false when absent. */
static bool last(object obj, std::string_view key, element *found)
{
    bool seen = false;
    for (auto field : obj) {
        if (field.key == key) {
            *found = field.value;
            seen = true;
        }
    }
    return seen;
}

/* The claimed scalar under key, or None when absent; NULL to defer. */
static PyObject *claimed(object obj, std::string_view key)
{
    element value;
    if (!last(obj, key, &value))
        Py_RETURN_NONE;
    return scalar(value);
}

/* The chain's hash as Python reads it: the value of "hash" in a chain object,
 * "" for a chain that is not an object or has no hash; NULL to defer. */
static PyObject *chain_hash(object guard)
{
    element chain, hash;
    if (!last(guard, "chain", &chain) || chain.type() != element_type::OBJECT
        || !last(chain.get_object().value_unsafe(), "hash", &hash))
        return PyUnicode_FromStringAndSize("", 0);
    return scalar(hash);
}

static bool parse(const char *data, size_t size, object *top)
{
    std::memcpy(padded, data, size);
    std::memset(padded + size, 0, simdjson::SIMDJSON_PADDING);
    element doc;
    if (parser->parse(padded, size, false).get(doc))
        return false;
    return !doc.get_object().get(*top);
}

/* The last object under key; false when absent or when any copy of it is not
 * an object (msgspec's typed decoder refuses that copy, json would take the
 * last: the Python path decides). */
static bool member_object(object top, std::string_view key, object *out)
{
    bool seen = false;
    for (auto field : top) {
        if (field.key != key)
            continue;
        if (field.value.get_object().get(*out))
            return false;
        seen = true;
    }
    return seen;
}

static PyObject *claims(PyObject *module, PyObject *line)
{
    char *data;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(line, &data, &size) < 0)
        return NULL;
    object top, head, guard;
    /* a UTF-8 byte order mark: simdjson skips it, Python's readers do not */
    if ((size_t)size > LONGEST || (size >= 3 && std::memcmp(data, "\xef\xbb\xbf", 3) == 0)
        || !parse(data, (size_t)size, &top) || !member_object(top, "event", &head)
        || !member_object(top, "kernel_guard", &guard))
        Py_RETURN_NONE;
    element unused;
    PyObject *sequence = claimed(head, "sequence");
    PyObject *action = sequence ? claimed(head, "action") : NULL;
    PyObject *stream = action ? claimed(guard, "stream") : NULL;
    PyObject *hash = stream ? chain_hash(guard) : NULL;
    if (hash == NULL) {
        Py_XDECREF(sequence);
        Py_XDECREF(action);
        Py_XDECREF(stream);
        Py_RETURN_NONE;
    }
    PyObject *authored = PyBool_FromLong(last(guard, "recorded_by", &unused));
    return Py_BuildValue("(NNNNN)", sequence, action, stream, authored, hash);
}

static PyMethodDef methods[] = {
    {"claims", claims, METH_O,
     "claims(line: bytes) -> (sequence, action, stream, recorded_by present, chain hash) or None\n\n"
     "The fields a kernel's JSON line claims of itself, read as Python's json reads them;\n"
     "None where the Python path must decide."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_linecheck",
    "The custodian's line parser (simdjson): a line's claimed fields, or None to defer to Python.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__linecheck(void)
{
    if (parser == NULL) {
        padded = (char *)PyMem_RawMalloc(LONGEST + simdjson::SIMDJSON_PADDING);
        if (padded == NULL)
            return PyErr_NoMemory();
        try {
            parser = new simdjson::dom::parser(LONGEST);
            if (parser->allocate(LONGEST, DEEPEST))
                throw std::bad_alloc();
        } catch (...) {
            delete parser;
            parser = NULL;
            PyMem_RawFree(padded);
            padded = NULL;
            return PyErr_NoMemory();
        }
    }
    return PyModule_Create(&module);
}
