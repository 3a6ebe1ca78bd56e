/* kernel_guard.events._gate: the redaction gate's "nothing here" answer, in one pass.
 *
 * Why this exists: nearly every event the writer redacts holds no secret, and
 * the gate in secrets.py (a substring test per anchor, two translate-and-split
 * passes, a trie over long words) costs about 3 us of Python per event, most
 * of the redaction budget.  This scan answers the one question those events
 * ask -- "could any detector match here?" -- in a single pass over each text,
 * with the gate's own tables passed in from secrets.py (the catalogue stays in
 * Python).
 *
 * It is conservative: it says "candidate" for everything the Python gate
 * would choose a detector for, and for a little more (any "://", any run of 40
 * base64 characters, any text that is not ASCII).  A candidate goes through
 * the Python gate and the detectors as before; only texts this scan calls
 * clean skip them.  tests/events/test_secret_gate.py checks that the two agree.
 *
 * Gate(anywhere, in_words, programs, word_chars, program_chars, long_word, long_run)
 *     anywhere      keywords looked for at every position (lower case, ASCII)
 *     in_words      keywords looked for inside "long words" only
 *     programs      whole words of program_chars that name a program
 *     word_chars    the characters of a word (after lower-casing)
 *     long_word     a word at least this long is searched for in_words
 *     long_run      a run of base64 characters at least this long is a candidate
 * Gate.clean(texts) -> True when no text of the sequence holds a candidate.
 * Gate.clean_fields(event, fields) -> the same for an event's (object, field) values,
 *     each a str, or a list or dict of str (anything else in them: not clean).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_WORDS 512

typedef struct {
    const char *text;
    Py_ssize_t len;
} word_t;

/* keywords grouped by their first character, for a compare only where one can start */
typedef struct {
    PyObject *owner;                 /* a tuple of bytes holding the keywords' text */
    word_t words[MAX_WORDS];
    Py_ssize_t count;
    Py_ssize_t first[256][2];        /* [start, end) in words, by first character */
} table_t;

typedef struct {
    PyObject_HEAD
    table_t anywhere;
    table_t in_words;
    table_t programs;
    unsigned char word_char[256];
    unsigned char program_char[256];
    unsigned char base64_char[256];
    Py_ssize_t long_word;
    Py_ssize_t long_run;
} GateObject;

static int
compare_first(const void *a, const void *b)
{
    return (int)(unsigned char)((const word_t *)a)->text[0] - (int)(unsigned char)((const word_t *)b)->text[0];
}

/* Fill a table from a sequence of ASCII str, kept alive as bytes in table->owner. */
static int
table_fill(table_t *table, PyObject *sequence, const char *what)
{
    PyObject *fast = PySequence_Fast(sequence, what);
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > MAX_WORDS) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "%s: at most %d keywords", what, MAX_WORDS);
        return -1;
    }
    table->owner = PyTuple_New(n);
    if (table->owner == NULL) {
        Py_DECREF(fast);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        PyObject *raw = PyUnicode_Check(item) ? PyUnicode_AsASCIIString(item) : NULL;
        if (raw == NULL || PyBytes_GET_SIZE(raw) == 0) {
            Py_XDECREF(raw);
            Py_DECREF(fast);
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "%s: keywords are non-empty ASCII str", what);
            return -1;
        }
        PyTuple_SET_ITEM(table->owner, i, raw);
        table->words[i].text = PyBytes_AS_STRING(raw);
        table->words[i].len = PyBytes_GET_SIZE(raw);
    }
    Py_DECREF(fast);
    table->count = n;
    qsort(table->words, (size_t)n, sizeof(word_t), compare_first);
    memset(table->first, 0, sizeof(table->first));
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)table->words[i].text[0];
        if (table->first[c][1] == 0)
            table->first[c][0] = i;
        table->first[c][1] = i + 1;
    }
    return 0;
}

static int
chars_fill(unsigned char *set, PyObject *chars, const char *what)
{
    if (!PyUnicode_Check(chars) || !PyUnicode_IS_ASCII(chars)) {
        PyErr_Format(PyExc_TypeError, "%s: an ASCII str", what);
        return -1;
    }
    memset(set, 0, 256);
    const unsigned char *data = PyUnicode_1BYTE_DATA(chars);
    for (Py_ssize_t i = 0; i < PyUnicode_GET_LENGTH(chars); i++)
        set[data[i]] = 1;
    return 0;
}

static inline unsigned char
lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* Whether a keyword of table starts at text[at] (compared in lower case, within end). */
static int
starts_here(const table_t *table, const unsigned char *text, Py_ssize_t at, Py_ssize_t end)
{
    Py_ssize_t from = table->first[lower(text[at])][0], to = table->first[lower(text[at])][1];
    for (Py_ssize_t k = from; k < to; k++) {
        const word_t *w = &table->words[k];
        if (w->len > end - at)
            continue;
        Py_ssize_t j = 1;
        while (j < w->len && lower(text[at + j]) == (unsigned char)w->text[j])
            j++;
        if (j == w->len)
            return 1;
    }
    return 0;
}

/* Whether a whole word equals one of table's words. */
static int
is_word(const table_t *table, const unsigned char *text, Py_ssize_t len)
{
    Py_ssize_t from = table->first[lower(text[0])][0], to = table->first[lower(text[0])][1];
    for (Py_ssize_t k = from; k < to; k++) {
        const word_t *w = &table->words[k];
        if (w->len != len)
            continue;
        Py_ssize_t j = 1;
        while (j < len && lower(text[j]) == (unsigned char)w->text[j])
            j++;
        if (j == len)
            return 1;
    }
    return 0;
}

/* 1 when the ASCII text holds a candidate, 0 when it holds none. */
static int
text_candidate(const GateObject *g, const unsigned char *text, Py_ssize_t n)
{
    Py_ssize_t word = 0, program = 0, run = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        unsigned char c = i < n ? text[i] : ' ';
        unsigned char low = lower(c);
        if (i < n && g->anywhere.first[low][1] && starts_here(&g->anywhere, text, i, n))
            return 1;
        if (g->word_char[low]) {
            word++;
        } else {
            if (word >= g->long_word) {
                for (Py_ssize_t at = i - word; at < i; at++)
                    if (g->in_words.first[lower(text[at])][1] && starts_here(&g->in_words, text, at, i))
                        return 1;
            }
            word = 0;
        }
        if (g->program_char[low]) {
            program++;
        } else {
            if (program && is_word(&g->programs, text + i - program, program))
                return 1;
            program = 0;
        }
        run = g->base64_char[c] ? run + 1 : 0;
        if (run >= g->long_run)
            return 1;
    }
    return 0;
}

static PyObject *
Gate_clean(GateObject *self, PyObject *texts)
{
    PyObject *fast = PySequence_Fast(texts, "clean() takes a sequence of str");
    if (fast == NULL)
        return NULL;
    int clean = 1;
    for (Py_ssize_t i = 0; clean && i < PySequence_Fast_GET_SIZE(fast); i++) {
        PyObject *text = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) {
            clean = 0;  /* not ours to judge: the Python gate decides (it runs every detector) */
            break;
        }
        clean = !text_candidate(self, PyUnicode_1BYTE_DATA(text), PyUnicode_GET_LENGTH(text));
    }
    Py_DECREF(fast);
    return PyBool_FromLong(clean);
}

/* 0 when a value holds a candidate or something this scan does not judge; 1 when clean. */
static int
value_clean(const GateObject *self, PyObject *value)
{
    if (PyUnicode_Check(value))
        return PyUnicode_IS_ASCII(value)
               && !text_candidate(self, PyUnicode_1BYTE_DATA(value), PyUnicode_GET_LENGTH(value));
    return 0;
}

/* Lists and dicts of user text: every item a clean str (anything else: the Python gate). */
static int
collection_clean(const GateObject *self, PyObject *value)
{
    if (PyList_Check(value)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(value); i++)
            if (!value_clean(self, PyList_GET_ITEM(value, i)))
                return 0;
        return 1;
    }
    if (PyDict_Check(value)) {
        Py_ssize_t pos = 0;
        PyObject *key, *item;
        while (PyDict_Next(value, &pos, &key, &item))
            if (!value_clean(self, item))
                return 0;
        return 1;
    }
    return 1;  /* numbers, None: not text, as the Python walk skips them */
}

static PyObject *
Gate_clean_fields(GateObject *self, PyObject *args)
{
    PyObject *event, *fields;
    if (!PyArg_ParseTuple(args, "O!O!:clean_fields", &PyDict_Type, &event, &PyTuple_Type, &fields))
        return NULL;
    /* the pairs come grouped by object: each object is looked up once, and held (a
     * lookup compares keys, which may run Python code that changes the event) */
    PyObject *outer = NULL, *node = NULL, *result = Py_True;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fields); i++) {
        PyObject *pair = PyTuple_GET_ITEM(fields, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "clean_fields: fields are (object, field) pairs");
            result = NULL;
            break;
        }
        if (PyTuple_GET_ITEM(pair, 0) != outer) {  /* outer starts NULL: never an item */
            outer = PyTuple_GET_ITEM(pair, 0);
            Py_CLEAR(node);
            node = PyDict_GetItemWithError(event, outer);
            if (node == NULL && PyErr_Occurred()) {
                result = NULL;
                break;
            }
            Py_XINCREF(node);
        }
        if (node == NULL || !PyDict_Check(node))
            continue;
        PyObject *value = PyDict_GetItemWithError(node, PyTuple_GET_ITEM(pair, 1));
        if (value == NULL) {
            if (PyErr_Occurred()) {
                result = NULL;
                break;
            }
            continue;
        }
        /* the scan runs no Python code: the borrowed value stays valid through it */
        if (!(PyUnicode_Check(value) ? value_clean(self, value) : collection_clean(self, value))) {
            result = Py_False;
            break;
        }
    }
    Py_XDECREF(node);
    Py_XINCREF(result);
    return result;
}

static int
Gate_init(GateObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *anywhere, *in_words, *programs, *word_chars, *program_chars;
    Py_ssize_t long_word, long_run;
    if (!PyArg_ParseTuple(args, "OOOUUnn:Gate", &anywhere, &in_words, &programs, &word_chars, &program_chars,
                          &long_word, &long_run))
        return -1;
    if (long_word < 1 || long_run < 1) {
        PyErr_SetString(PyExc_ValueError, "long_word and long_run are at least 1");
        return -1;
    }
    Py_CLEAR(self->anywhere.owner);  /* __init__ called again: start afresh */
    Py_CLEAR(self->in_words.owner);
    Py_CLEAR(self->programs.owner);
    if (table_fill(&self->anywhere, anywhere, "anywhere") < 0 || table_fill(&self->in_words, in_words, "in_words") < 0
        || table_fill(&self->programs, programs, "programs") < 0
        || chars_fill(self->word_char, word_chars, "word_chars") < 0
        || chars_fill(self->program_char, program_chars, "program_chars") < 0)
        return -1;
    memset(self->base64_char, 0, sizeof(self->base64_char));
    for (int c = 0; c < 256; c++)
        self->base64_char[c] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                               || c == '/' || c == '+';
    self->long_word = long_word;
    self->long_run = long_run;
    return 0;
}

static void
Gate_dealloc(GateObject *self)
{
    Py_XDECREF(self->anywhere.owner);
    Py_XDECREF(self->in_words.owner);
    Py_XDECREF(self->programs.owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Gate_methods[] = {
    {"clean", (PyCFunction)Gate_clean, METH_O,
     "clean(texts) -> True when no text holds anything a detector could match"},
    {"clean_fields", (PyCFunction)Gate_clean_fields, METH_VARARGS,
     "clean_fields(event, fields) -> clean() of the event's (object, field) values: str, lists, dicts"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject GateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kernel_guard.events._gate.Gate",
    .tp_basicsize = sizeof(GateObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The redaction gate's one-pass scan (see the module's comment).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Gate_init,
    .tp_dealloc = (destructor)Gate_dealloc,
    .tp_methods = Gate_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kernel_guard.events._gate", "The redaction gate's one-pass scan.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__gate(void)
{
    if (PyType_Ready(&GateType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&GateType);
    if (PyModule_AddObject(m, "Gate", (PyObject *)&GateType) < 0) {
        Py_DECREF(&GateType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
