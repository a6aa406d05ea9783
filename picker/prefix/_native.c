/* The approximate prefix index's per-block loops, compiled (picker/prefix/native.py).

Why: a long prompt is hashed, matched and recorded block by block, and in Python each block
costs a slice, two tuples and a few dict calls through the interpreter (issue 27: a 100k-token
prompt at the smallest constant; issue 28: a replay spends a quarter of its CPU here). These
functions do exactly what the pure-Python fallbacks in native.py do, to the bit: the hashes are
the ones Python's `hash((previous, units[a:b]))` gives, so a process with this module and one
without it (a replica, a fallback) agree on every block. native.py checks that on import and
the unit tests check it on random prompts.

The hashes are computed without building the tuples: CPython hashes a tuple with an
xxHash-style accumulator over its items' hashes (Objects/tupleobject.c, `tuplehash`, since
3.8), and an int by its value modulo 2**61 - 1 (the numeric hash documented in the Python
reference, "Hashing of numeric types"). The constants are those of that accumulator.
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define XXPRIME_1 ((Py_uhash_t)11400714785074694791ULL)
#define XXPRIME_2 ((Py_uhash_t)14029467366897019727ULL)
#define XXPRIME_5 ((Py_uhash_t)2870177450012600261ULL)
#define XXROTATE(x) (((x) << 31) | ((x) >> 33))
#define INT_HASH_MODULUS ((unsigned long long)((1ULL << 61) - 1))

#if SIZEOF_PY_HASH_T != 8
#error "the tuple hash below is the 64-bit one"
#endif

/* Python's hash of the int `value`: |value| modulo 2**61 - 1 with value's sign, -1 -> -2. */
static Py_hash_t int_hash(long long value) {
    unsigned long long magnitude = value < 0 ? 0ULL - (unsigned long long)value
                                             : (unsigned long long)value;
    long long reduced = (long long)(magnitude % INT_HASH_MODULUS);
    Py_hash_t hash = value < 0 ? -reduced : reduced;
    return hash == -1 ? -2 : hash;
}

typedef struct {
    Py_uhash_t acc;
    Py_ssize_t lanes;
} TupleHash;

static inline void tuple_start(TupleHash *state) {
    state->acc = XXPRIME_5;
    state->lanes = 0;
}

static inline void tuple_lane(TupleHash *state, Py_uhash_t lane) {
    state->acc += lane * XXPRIME_2;
    state->acc = XXROTATE(state->acc);
    state->acc *= XXPRIME_1;
    state->lanes++;
}

static inline Py_hash_t tuple_end(TupleHash *state) {
    Py_uhash_t acc = state->acc + ((Py_uhash_t)state->lanes ^ (XXPRIME_5 ^ 3527539UL));
    return acc == (Py_uhash_t)-1 ? 1546275796 : (Py_hash_t)acc;
}

/* hash(item) for one token id: an exact int of one digit (every token id: digits are 30
   bits) read in place, anything else through its type. */
static inline Py_hash_t item_hash(PyObject *item) {
    if (PyLong_CheckExact(item)) {
#if PY_VERSION_HEX >= 0x030C0000
        if (PyUnstable_Long_IsCompact((PyLongObject *)item))
            return int_hash(PyUnstable_Long_CompactValue((PyLongObject *)item));
#else
        Py_ssize_t size = Py_SIZE(item);
        if (size >= -1 && size <= 1)
            return int_hash((long long)size * ((PyLongObject *)item)->ob_digit[0]);
#endif
    }
    return PyObject_Hash(item);
}

/* hash(tuple(units[start:end])) for a tuple or a list, without the slice. An item's hash may
   run Python code that shortens a list: each of a list's items is read after checking its
   length, and held while hashed. */
static Py_hash_t items_slice_hash(PyObject *units, Py_ssize_t start, Py_ssize_t end) {
    int is_list = PyList_Check(units);
    TupleHash state;
    tuple_start(&state);
    for (Py_ssize_t i = start; i < end; i++) {
        if (is_list && i >= PyList_GET_SIZE(units)) {
            PyErr_SetString(PyExc_RuntimeError, "the token list changed while it was hashed");
            return -1;
        }
        PyObject *item = is_list ? PyList_GET_ITEM(units, i) : PyTuple_GET_ITEM(units, i);
        Py_INCREF(item);
        Py_hash_t lane = item_hash(item);
        Py_DECREF(item);
        if (lane == -1)
            return -1;
        tuple_lane(&state, (Py_uhash_t)lane);
    }
    return tuple_end(&state);
}

static Py_hash_t str_slice_hash(PyObject *units, Py_ssize_t start, Py_ssize_t end) {
    PyObject *part = PyUnicode_Substring(units, start, end);
    if (part == NULL)
        return -1;
    Py_hash_t hash = PyObject_Hash(part);
    Py_DECREF(part);
    return hash;
}

/* chain(seed, units, block_size, first, last) -> the hashes of blocks first..last-1, chained
   from seed (the hash of block first - 1, or the namespace's). A list of token ids hashes as
   the tuple of them would: no copy of a long prompt's ids. */
static PyObject *chain(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t block_size, first, last;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "chain(seed, units, block_size, first, last)");
        return NULL;
    }
    PyObject *units = args[1];
    int is_str = PyUnicode_Check(units);
    if (!is_str && !PyTuple_Check(units) && !PyList_Check(units)) {
        PyErr_SetString(PyExc_TypeError, "units must be a str, a tuple or a list");
        return NULL;
    }
    if ((block_size = PyLong_AsSsize_t(args[2])) == -1 && PyErr_Occurred())
        return NULL;
    if ((first = PyLong_AsSsize_t(args[3])) == -1 && PyErr_Occurred())
        return NULL;
    if ((last = PyLong_AsSsize_t(args[4])) == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t length = is_str ? PyUnicode_GET_LENGTH(units) : Py_SIZE(units);
    if (block_size < 1 || first < 0 || last > length / block_size) {
        PyErr_SetString(PyExc_ValueError, "blocks out of the units' range");
        return NULL;
    }
    Py_hash_t current = PyObject_Hash(args[0]);
    if (current == -1)
        return NULL;
    PyObject *hashes = PyList_New(last > first ? last - first : 0);
    if (hashes == NULL)
        return NULL;
    for (Py_ssize_t block = first; block < last; block++) {
        Py_ssize_t end = (block + 1) * block_size;
        Py_hash_t part = is_str ? str_slice_hash(units, end - block_size, end)
                                : items_slice_hash(units, end - block_size, end);
        if (part == -1)
            goto fail;
        TupleHash pair;
        tuple_start(&pair);
        tuple_lane(&pair, (Py_uhash_t)current);
        tuple_lane(&pair, (Py_uhash_t)part);
        Py_hash_t hashed = tuple_end(&pair);
        PyObject *value = PyLong_FromSsize_t(hashed);
        if (value == NULL)
            goto fail;
        PyList_SET_ITEM(hashes, block - first, value);
        /* The next block pairs with hash(hashed), Python's hash of this int. */
        current = int_hash(hashed);
    }
    return hashes;
fail:
    Py_DECREF(hashes);
    return NULL;
}

/* Item i of a list of block hashes, which must be ints. The loops call no Python code on
   their own (exact ints, dicts and OrderedDicts only), but a dict lookup may still compare
   with a stored key of another type: the list's length is checked at every read. */
static PyObject *block_at(PyObject *hashes, Py_ssize_t i) {
    if (i >= PyList_GET_SIZE(hashes)) {
        PyErr_SetString(PyExc_RuntimeError, "the block hashes changed while they were read");
        return NULL;
    }
    PyObject *block = PyList_GET_ITEM(hashes, i);
    if (!PyLong_CheckExact(block)) {
        PyErr_Format(PyExc_TypeError, "block hashes must be ints, not %.100s",
                     Py_TYPE(block)->tp_name);
        return NULL;
    }
    return block;
}

/* A holders mask read from the masks dict: an exact int (another type's operators would run
   Python code in the middle of a walk). */
static int is_mask(PyObject *mask) {
    if (PyLong_CheckExact(mask))
        return 1;
    PyErr_Format(PyExc_TypeError, "holder masks must be ints, not %.100s",
                 Py_TYPE(mask)->tp_name);
    return 0;
}

/* Appends (mask, depth) to drops. */
static int add_drop(PyObject *drops, PyObject *mask, Py_ssize_t depth) {
    PyObject *pair = Py_BuildValue("(On)", mask, depth);
    if (pair == NULL)
        return -1;
    int status = PyList_Append(drops, pair);
    Py_DECREF(pair);
    return status;
}

/* drops() for candidate masks of up to 63 workers: the bits in machine words. A mask wider
   than that (more workers were ever seen) keeps only the bits `alive` can have. */
static int drops_in_words(PyObject *masks, PyObject *hashes, unsigned long long alive,
                          PyObject *drops) {
    Py_ssize_t depth = 0, count = PyList_GET_SIZE(hashes);
    for (Py_ssize_t i = 0; i < count && alive; i++) {
        PyObject *block = block_at(hashes, i);
        if (block == NULL)
            return -1;
        PyObject *found = PyDict_GetItemWithError(masks, block);
        unsigned long long still = 0;
        if (found != NULL) {
            if (!is_mask(found))
                return -1;
            still = PyLong_AsUnsignedLongLongMask(found);
            if (still == (unsigned long long)-1 && PyErr_Occurred())
                return -1;
            still &= alive;
        } else if (PyErr_Occurred()) {
            return -1;
        }
        if (depth && still != alive) {
            PyObject *lost = PyLong_FromUnsignedLongLong(alive & ~still);
            int status = lost == NULL ? -1 : add_drop(drops, lost, depth);
            Py_XDECREF(lost);
            if (status < 0)
                return -1;
        }
        alive = still;
        if (alive)
            depth++;
    }
    if (alive) {
        PyObject *left = PyLong_FromUnsignedLongLong(alive);
        int status = left == NULL ? -1 : add_drop(drops, left, depth);
        Py_XDECREF(left);
        return status;
    }
    return 0;
}

/* drops() for any width, with Python's int operations. */
static int drops_in_ints(PyObject *masks, PyObject *hashes, PyObject *alive, PyObject *drops) {
    Py_ssize_t depth = 0, count = PyList_GET_SIZE(hashes);
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL)
        return -1;
    Py_INCREF(alive);
    int status = 0, any = PyObject_IsTrue(alive);
    for (Py_ssize_t i = 0; i < count && any > 0 && status == 0; i++) {
        PyObject *block = block_at(hashes, i);
        PyObject *found = block == NULL ? NULL : PyDict_GetItemWithError(masks, block);
        if ((found == NULL && PyErr_Occurred()) || (found != NULL && !is_mask(found))) {
            status = -1;
            break;
        }
        PyObject *still = PyNumber_And(found == NULL ? zero : found, alive);
        int differs = still == NULL ? -1 : PyObject_RichCompareBool(still, alive, Py_NE);
        if (differs < 0) {
            Py_XDECREF(still);
            status = -1;
            break;
        }
        if (depth && differs) {
            PyObject *kept = PyNumber_Invert(still);
            PyObject *lost = kept == NULL ? NULL : PyNumber_And(alive, kept);
            status = lost == NULL ? -1 : add_drop(drops, lost, depth);
            Py_XDECREF(kept);
            Py_XDECREF(lost);
        }
        Py_SETREF(alive, still);
        if (status < 0)
            break;
        any = PyObject_IsTrue(alive);
        if (any > 0)
            depth++;
    }
    if (any < 0)
        status = -1;
    if (status == 0 && any > 0)
        status = add_drop(drops, alive, depth);
    Py_DECREF(alive);
    Py_DECREF(zero);
    return status;
}

/* drops(masks, hashes, alive) -> [(mask, depth)]: Holders.leading's walk down a prompt. */
static PyObject *drops(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyDict_CheckExact(args[0]) || !PyList_Check(args[1]) ||
        !PyLong_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "drops(masks: dict, hashes: list, alive: int)");
        return NULL;
    }
    PyObject *result = PyList_New(0);
    if (result == NULL)
        return NULL;
    int overflow;
    long long alive = PyLong_AsLongLongAndOverflow(args[2], &overflow);
    if (alive == -1 && PyErr_Occurred()) {
        Py_DECREF(result);
        return NULL;
    }
    int status = !overflow && alive >= 0
        ? drops_in_words(args[0], args[1], (unsigned long long)alive, result)
        : drops_in_ints(args[0], args[1], args[2], result);
    if (status < 0) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

/* masks[block] &= ~bit, deleting the entry at 0. */
static int drop_bit(PyObject *masks, PyObject *block, PyObject *free_bits) {
    PyObject *mask = PyDict_GetItemWithError(masks, block);
    if (mask == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!is_mask(mask))
        return -1;
    PyObject *left = PyNumber_And(mask, free_bits);
    if (left == NULL)
        return -1;
    int status = PyObject_IsTrue(left);
    if (status > 0)
        status = PyDict_SetItem(masks, block, left);
    else if (status == 0)
        status = PyDict_DelItem(masks, block);
    Py_DECREF(left);
    return status;
}

/* The `count` least recently used blocks leave `lru`, and the worker's bit their masks. */
static int evict(PyObject *lru, PyObject *masks, Py_ssize_t count, PyObject *bit) {
    if (count <= 0)
        return 0;
    PyObject *popitem = PyObject_GetAttrString(lru, "popitem");
    PyObject *free_bits = PyNumber_Invert(bit);
    int status = popitem != NULL && free_bits != NULL ? 0 : -1;
    for (Py_ssize_t i = 0; i < count && status == 0; i++) {
        PyObject *oldest_first = Py_False;
        PyObject *item = PyObject_Vectorcall(popitem, &oldest_first, 1, NULL);
        if (item == NULL) {
            status = -1;
            break;
        }
        status = PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 2
            ? drop_bit(masks, PyTuple_GET_ITEM(item, 0), free_bits) : -1;
        if (status < 0 && !PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "lru.popitem() must return a (key, value) pair");
        Py_DECREF(item);
    }
    Py_XDECREF(popitem);
    Py_XDECREF(free_bits);
    return status;
}

/* record(lru, masks, hashes, capacity, bit): ApproxPrefixIndex.record_hashes' loop. */
static PyObject *record(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyODict_CheckExact(args[0]) || !PyDict_CheckExact(args[1]) ||
        !PyList_Check(args[2]) || !PyLong_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "record(lru: OrderedDict, masks: dict, hashes: list, capacity: int, "
                        "bit: int)");
        return NULL;
    }
    PyObject *lru = args[0], *masks = args[1], *hashes = args[2], *bit = args[4];
    Py_ssize_t capacity = PyLong_AsSsize_t(args[3]);
    if (capacity == -1 && PyErr_Occurred())
        return NULL;
    if (capacity < 0) {
        PyErr_SetString(PyExc_ValueError, "capacity must be 0 or more");
        return NULL;
    }
    PyObject *touch = PyObject_GetAttrString(lru, "move_to_end");
    if (touch == NULL)
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(hashes);
    if (count > capacity)
        count = capacity;
    int status = 0;
    for (Py_ssize_t i = count - 1; i >= 0 && status == 0; i--) {
        PyObject *block = block_at(hashes, i);
        if (block == NULL) {
            status = -1;
            break;
        }
        Py_INCREF(block);
        status = PyDict_Contains(lru, block);
        if (status > 0) {
            PyObject *done = PyObject_Vectorcall(touch, &block, 1, NULL);
            status = done == NULL ? -1 : 0;
            Py_XDECREF(done);
        } else if (status == 0) {
            status = PyODict_SetItem(lru, block, Py_None);
            PyObject *mask = status == 0 ? PyDict_GetItemWithError(masks, block) : NULL;
            if (status == 0 && ((mask == NULL && PyErr_Occurred()) ||
                                (mask != NULL && !is_mask(mask))))
                status = -1;
            if (status == 0) {
                PyObject *joined = mask == NULL ? Py_NewRef(bit) : PyNumber_Or(mask, bit);
                status = joined == NULL ? -1 : PyDict_SetItem(masks, block, joined);
                Py_XDECREF(joined);
            }
        }
        Py_DECREF(block);
    }
    Py_DECREF(touch);
    if (status == 0) {
        Py_ssize_t over = PyDict_GET_SIZE(lru) - capacity;
        status = evict(lru, masks, over, bit);
    }
    if (status < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* evict(lru, masks, count, bit): ApproxPrefixIndex's trim of a worker's oldest blocks. */
static PyObject *evict_oldest(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyODict_CheckExact(args[0]) || !PyDict_CheckExact(args[1]) ||
        !PyLong_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "evict_oldest(lru: OrderedDict, masks: dict, count: int, bit: int)");
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[2]);
    if (count == -1 && PyErr_Occurred())
        return NULL;
    if (evict(args[0], args[1], count, args[3]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"drops", (PyCFunction)(void (*)(void))drops, METH_FASTCALL,
     "drops(masks, hashes, alive) -> where the walk down a prompt loses holders"},
    {"chain", (PyCFunction)(void (*)(void))chain, METH_FASTCALL,
     "chain(seed, units, block_size, first, last) -> chained block hashes"},
    {"record", (PyCFunction)(void (*)(void))record, METH_FASTCALL,
     "record(lru, masks, hashes, capacity, bit): store a prompt's blocks for one worker"},
    {"evict_oldest", (PyCFunction)(void (*)(void))evict_oldest, METH_FASTCALL,
     "evict_oldest(lru, masks, count, bit): forget a worker's least recently used blocks"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "picker.prefix._native",
    "The approximate prefix index's per-block loops, compiled (see native.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    return PyModule_Create(&module_def);
}
