/* The sender's two per-event loops in C: reading a run of event frames (framing.FrameDecoder.take_events)
 * and writing the stubs of a run of plain tracks (wire.StubEncoder). Each is a drop-in for a Python
 * function that stays the reference and the fallback: the same inputs give the same outputs, which the
 * tests hold over generated inputs, and the package works unchanged where this module is not built.
 *
 * Both only recognise: whatever they are not sure of (a frame that is not a whole, valid event frame; a
 * record that is not a plain track; a string whose JSON is not its bytes in quotes) stops them, and the
 * Python code, which tells every case apart, takes over from there. So this file holds no error paths of
 * its own beyond "stop here", and never escapes JSON: orjson encodes every string that needs escaping.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The frame layout of rudder_fast/framing.py (a test holds these to its constants). */
#define SYNC 0x1CA92EF5u
#define FRAME_HEAD_SIZE 24
#define FRAME_EVENT 1
#define MAX_PAYLOAD 4000000u

/* ---- CRC-32 (the zlib polynomial), slicing by eight bytes ---------------------------------------- */

static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        }
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc_table[0][n];
        for (int k = 1; k < 8; k++) {
            c = crc_table[0][c & 0xff] ^ (c >> 8);
            crc_table[k][n] = c;
        }
    }
}

static inline uint32_t load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t load_le64(const unsigned char *p) {
    return (uint64_t)load_le32(p) | (uint64_t)load_le32(p + 4) << 32;
}

/* The CRC-32 of the bytes before p (crc, as zlib's crc32() returns it: 0 for none) and p's n bytes. */
static uint32_t crc32_of(uint32_t crc, const unsigned char *p, size_t n) {
    uint32_t c = crc ^ 0xFFFFFFFFu;
    while (n >= 8) {
        uint32_t lo = load_le32(p) ^ c;
        uint32_t hi = load_le32(p + 4);
        c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^ crc_table[5][(lo >> 16) & 0xff] ^
            crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
            crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) {
        c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    }
    return c ^ 0xFFFFFFFFu;
}

/* crc32(data, value=0) -> int: zlib's crc32(), by the table above. */
static PyObject *speedups_crc32(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "crc32(data, value=0)");
        return NULL;
    }
    unsigned long value = 0;
    if (nargs == 2) {
        value = PyLong_AsUnsignedLong(args[1]);
        if (value == (unsigned long)-1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    uint32_t c = crc32_of((uint32_t)value, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(c);
}

/* ---- take_events ----------------------------------------------------------------------------------- */

/* From this many payload bytes on, a frame's CRC is finished by the crc32 function the caller passes
 * (zlib-ng's, which folds tens of bytes per nanosecond and releases the GIL on large buffers) rather than
 * by the table above (about two bytes per nanosecond): below it, the call would cost more than it saves. */
#define LARGE_PAYLOAD 512

/* The CRC-32 of a frame's covered bytes (meta: len, type, reserved, seq; then the payload object's
 * bytes), or -1 with an exception set if crc32 failed. */
static long long frame_crc(const unsigned char *meta, PyObject *payload, PyObject *crc32) {
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    uint32_t head = crc32_of(0, meta, FRAME_HEAD_SIZE - 8);
    if (n < LARGE_PAYLOAD) {
        return crc32_of(head, (const unsigned char *)PyBytes_AS_STRING(payload), (size_t)n);
    }
    PyObject *value = PyObject_CallFunction(crc32, "OI", payload, (unsigned int)head);
    if (value == NULL) {
        return -1;
    }
    unsigned long c = PyLong_AsUnsignedLong(value);
    Py_DECREF(value);
    if (c == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    return (long long)c;
}

/* take_events(buf, pos, limit, base, crc32) -> (seqs, payloads, ends, pos): the whole, checked event
 * frames of buf from pos, at most limit, as FrameDecoder.take_events_in_python reads them; ends are
 * base + each frame's end in buf, and pos is where the first frame not taken starts. crc32(data, value)
 * is zlib's interface, for the large payloads (see LARGE_PAYLOAD). */
static PyObject *speedups_take_events(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "take_events(buf: bytes, pos: int, limit: int, base: int, crc32)");
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t limit = PyNumber_AsSsize_t(args[2], NULL); /* clamped: any int is a limit */
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    long long base = PyLong_AsLongLong(args[3]);
    if (base == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *crc32 = args[4];
    if (pos < 0 || pos > size) {
        PyErr_SetString(PyExc_ValueError, "pos is outside the buffer");
        return NULL;
    }
    if (base < 0) {
        PyErr_SetString(PyExc_ValueError, "base is a stream position: it cannot be negative");
        return NULL;
    }
    PyObject *seqs = PyList_New(0), *payloads = PyList_New(0), *ends = PyList_New(0);
    if (seqs == NULL || payloads == NULL || ends == NULL) {
        goto fail;
    }
    for (Py_ssize_t taken = 0; taken < limit && size - pos >= FRAME_HEAD_SIZE; taken++) {
        const unsigned char *head = buf + pos;
        uint32_t len = load_le32(head + 8);
        if (load_le32(head) != SYNC || head[12] != FRAME_EVENT || len > MAX_PAYLOAD ||
            (Py_ssize_t)len > size - pos - FRAME_HEAD_SIZE) {
            break;
        }
        PyObject *payload = PyBytes_FromStringAndSize((const char *)head + FRAME_HEAD_SIZE, len);
        if (payload == NULL) {
            goto fail;
        }
        long long crc = frame_crc(head + 8, payload, crc32);
        if (crc != (long long)load_le32(head + 4)) {
            Py_DECREF(payload);
            if (crc == -1) {
                goto fail;
            }
            break;
        }
        if (PyList_Append(payloads, payload) < 0) {
            Py_DECREF(payload);
            goto fail;
        }
        Py_DECREF(payload);
        Py_ssize_t end = pos + FRAME_HEAD_SIZE + (Py_ssize_t)len;
        PyObject *seq = PyLong_FromUnsignedLongLong(load_le64(head + 16));
        if (seq == NULL || PyList_Append(seqs, seq) < 0) {
            Py_XDECREF(seq);
            goto fail;
        }
        Py_DECREF(seq);
        /* Both below 2**63: their sum fits in 64 unsigned bits. */
        PyObject *stream_end = PyLong_FromUnsignedLongLong((unsigned long long)base + (unsigned long long)end);
        if (stream_end == NULL || PyList_Append(ends, stream_end) < 0) {
            Py_XDECREF(stream_end);
            goto fail;
        }
        Py_DECREF(stream_end);
        pos = end;
    }
    return Py_BuildValue("(NNNn)", seqs, payloads, ends, pos);
fail:
    Py_XDECREF(seqs);
    Py_XDECREF(payloads);
    Py_XDECREF(ends);
    return NULL;
}

/* ---- plain_track_stubs ----------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Reader;

static inline uint64_t load_be(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

/* A msgpack nil: 1 if read, 0 if the next value is something else. */
static inline int read_nil(Reader *r) {
    if (r->p < r->end && *r->p == 0xc0) {
        r->p++;
        return 1;
    }
    return 0;
}

/* A non-negative msgpack integer into *out: 1 if read, 0 otherwise. */
static int read_uint(Reader *r, uint64_t *out) {
    if (r->p >= r->end) {
        return 0;
    }
    unsigned char t = *r->p;
    if (t <= 0x7f) {
        *out = t;
        r->p++;
        return 1;
    }
    int n;
    int is_signed = 0;
    switch (t) {
        case 0xcc: n = 1; break;
        case 0xcd: n = 2; break;
        case 0xce: n = 4; break;
        case 0xcf: n = 8; break;
        case 0xd0: n = 1; is_signed = 1; break;
        case 0xd1: n = 2; is_signed = 1; break;
        case 0xd2: n = 4; is_signed = 1; break;
        case 0xd3: n = 8; is_signed = 1; break;
        default: return 0;
    }
    if (r->end - r->p < 1 + n || (is_signed && (r->p[1] & 0x80))) {
        return 0;  /* short, or negative */
    }
    *out = load_be(r->p + 1, n);
    r->p += 1 + n;
    return 1;
}

/* A msgpack str (kind 's') or bin (kind 'b'): its bytes and length. 1 if read, 0 otherwise. */
static int read_raw(Reader *r, char kind, const unsigned char **data, Py_ssize_t *len) {
    if (r->p >= r->end) {
        return 0;
    }
    unsigned char t = *r->p;
    int n;
    uint64_t size;
    if (kind == 's' && t >= 0xa0 && t <= 0xbf) {
        n = 0;
        size = t & 0x1f;
    } else if ((kind == 's' && t == 0xd9) || (kind == 'b' && t == 0xc4)) {
        n = 1;
    } else if ((kind == 's' && t == 0xda) || (kind == 'b' && t == 0xc5)) {
        n = 2;
    } else if ((kind == 's' && t == 0xdb) || (kind == 'b' && t == 0xc6)) {
        n = 4;
    } else {
        return 0;
    }
    if (r->end - r->p < 1 + n) {
        return 0;
    }
    if (n) {
        size = load_be(r->p + 1, n);
    }
    if ((uint64_t)(r->end - r->p - 1 - n) < size) {
        return 0;
    }
    *data = r->p + 1 + n;
    *len = (Py_ssize_t)size;
    r->p += 1 + n + size;
    return 1;
}

/* Whether a str's JSON is its bytes in quotes, as orjson writes it: valid UTF-8 (Python's own check,
 * for the rare string that is not ASCII) with no character JSON escapes (a control character, '"', '\').
 * -1 for an error (out of memory). */
static int plain_json_string(const unsigned char *s, Py_ssize_t n) {
    int ascii = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c < 0x20 || c == '"' || c == '\\') {
            return 0;
        }
        ascii &= c < 0x80;
    }
    if (ascii) {
        return 1;
    }
    PyObject *text = PyUnicode_DecodeUTF8((const char *)s, n, "strict");
    if (text == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            return -1;
        }
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(text);
    return 1;
}

typedef struct {
    const unsigned char *data;
    Py_ssize_t len;
} Piece;

static inline char *put(char *out, const void *data, Py_ssize_t len) {
    memcpy(out, data, (size_t)len);
    return out + len;
}

/* plain_track_stubs(payloads, seqs, kind, head, keys, tail_of) -> list[bytes] | None: the stub of each
 * record of a run of plain tracks (see wire.StubEncoder._track_columns, whose bytes these are), or None
 * when one record is anything else or holds a string this does not write (the caller then takes the
 * Python way). head is the stub's opening up to the seq's digits; keys are the userId, anonymousId,
 * event and properties members' openings; tail_of(ms) gives the bytes between the ids and the event for
 * the millisecond ms. */
static PyObject *speedups_plain_track_stubs(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyBytes_Check(args[3]) || !PyTuple_Check(args[4]) || PyTuple_GET_SIZE(args[4]) != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "plain_track_stubs(payloads, seqs, kind: int, head: bytes, keys: tuple of 4 bytes, tail_of)");
        return NULL;
    }
    Piece keys[4];
    for (int i = 0; i < 4; i++) {
        PyObject *key = PyTuple_GET_ITEM(args[4], i);
        if (!PyBytes_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "keys must be bytes");
            return NULL;
        }
        keys[i].data = (const unsigned char *)PyBytes_AS_STRING(key);
        keys[i].len = PyBytes_GET_SIZE(key);
    }
    long kind = PyLong_AsLong(args[2]);
    if (kind == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *tail_of = args[5];
    const char *head = PyBytes_AS_STRING(args[3]);
    Py_ssize_t head_len = PyBytes_GET_SIZE(args[3]);

    /* Tuples: tail_of runs Python code, which must not be able to change or free what is being read. */
    PyObject *payloads = PySequence_Tuple(args[0]);
    if (payloads == NULL) {
        return NULL;
    }
    PyObject *seqs = PySequence_Tuple(args[1]);
    if (seqs == NULL) {
        Py_DECREF(payloads);
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(payloads);
    PyObject *out = NULL;
    PyObject *tail = NULL;  /* the tail of the millisecond last_ms */
    uint64_t last_ms = 0;
    if (PyTuple_GET_SIZE(seqs) != count) {
        PyErr_SetString(PyExc_ValueError, "payloads and seqs differ in length");
        goto done;
    }
    out = PyList_New(count);
    if (out == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *payload = PyTuple_GET_ITEM(payloads, i);
        if (!PyBytes_Check(payload)) {
            goto not_plain;
        }
        Reader r = {(const unsigned char *)PyBytes_AS_STRING(payload),
                    (const unsigned char *)PyBytes_AS_STRING(payload) + PyBytes_GET_SIZE(payload)};
        uint64_t record_kind, call_ns;
        Piece ids[2] = {{NULL, 0}, {NULL, 0}}, event, properties = {NULL, 0};
        if (!(r.p < r.end && *r.p++ == 0x9a && read_uint(&r, &record_kind) && record_kind == (uint64_t)kind &&
              read_uint(&r, &call_ns))) {
            goto not_plain;
        }
        for (int k = 0; k < 2; k++) {
            if (!read_nil(&r)) {
                if (!read_raw(&r, 's', &ids[k].data, &ids[k].len)) {
                    goto not_plain;
                }
                int plain = plain_json_string(ids[k].data, ids[k].len);
                if (plain < 0) {
                    goto failed;
                }
                if (plain == 0) {
                    goto not_plain;
                }
            }
        }
        if (!(read_nil(&r) && read_nil(&r) && read_nil(&r) && read_nil(&r) &&
              read_raw(&r, 's', &event.data, &event.len))) {
            goto not_plain;
        }
        int plain = plain_json_string(event.data, event.len);
        if (plain < 0) {
            goto failed;
        }
        if (plain == 0) {
            goto not_plain;
        }
        if (!read_nil(&r) && !read_raw(&r, 'b', &properties.data, &properties.len)) {
            goto not_plain;
        }
        if (r.p != r.end) {
            goto not_plain;
        }
        uint64_t ms = call_ns / 1000000u;
        if (tail == NULL || ms != last_ms) {
            Py_XDECREF(tail);
            tail = PyObject_CallFunction(tail_of, "K", (unsigned long long)ms);
            if (tail == NULL) {
                goto failed;
            }
            if (!PyBytes_Check(tail)) {
                PyErr_SetString(PyExc_TypeError, "tail_of must return bytes");
                goto failed;
            }
            last_ms = ms;
        }
        PyObject *seq_obj = PyTuple_GET_ITEM(seqs, i);
        unsigned long long seq = PyLong_AsUnsignedLongLong(seq_obj);
        if (seq == (unsigned long long)-1 && PyErr_Occurred()) {
            goto failed;
        }
        char digits[24];
        int digits_len = snprintf(digits, sizeof digits, "%llu\"", seq);
        Py_ssize_t size = head_len + digits_len + PyBytes_GET_SIZE(tail) + keys[2].len + event.len + 2;
        for (int k = 0; k < 2; k++) {
            if (ids[k].data != NULL) {
                size += keys[k].len + ids[k].len + 2;
            }
        }
        if (properties.data != NULL) {
            size += keys[3].len + properties.len;
        }
        PyObject *stub = PyBytes_FromStringAndSize(NULL, size);
        if (stub == NULL) {
            goto failed;
        }
        char *w = PyBytes_AS_STRING(stub);
        w = put(w, head, head_len);
        w = put(w, digits, digits_len);
        for (int k = 0; k < 2; k++) {
            if (ids[k].data != NULL) {
                w = put(w, keys[k].data, keys[k].len);
                *w++ = '"';
                w = put(w, ids[k].data, ids[k].len);
                *w++ = '"';
            }
        }
        w = put(w, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail));
        w = put(w, keys[2].data, keys[2].len);
        *w++ = '"';
        w = put(w, event.data, event.len);
        *w++ = '"';
        if (properties.data != NULL) {
            w = put(w, keys[3].data, keys[3].len);
            w = put(w, properties.data, properties.len);
        }
        PyList_SET_ITEM(out, i, stub);
    }
    goto done;
not_plain:
    Py_CLEAR(out);
    out = Py_None;
    Py_INCREF(out);
    goto done;
failed:
    Py_CLEAR(out);
done:
    Py_XDECREF(tail);
    Py_DECREF(payloads);
    Py_DECREF(seqs);
    return out;
}

static PyMethodDef speedups_methods[] = {
    {"crc32", (PyCFunction)(void (*)(void))speedups_crc32, METH_FASTCALL,
     "crc32(data, value=0) -> int: zlib's crc32()."},
    {"take_events", (PyCFunction)(void (*)(void))speedups_take_events, METH_FASTCALL,
     "take_events(buf, pos, limit, base, crc32) -> (seqs, payloads, ends, pos)"},
    {"plain_track_stubs", (PyCFunction)(void (*)(void))speedups_plain_track_stubs, METH_FASTCALL,
     "plain_track_stubs(payloads, seqs, kind, head, keys, tail_of) -> list[bytes] | None"},
    {NULL, NULL, 0, NULL},
};

static int speedups_exec(PyObject *module) {
    if (PyModule_AddIntConstant(module, "SYNC", SYNC) < 0 ||
        PyModule_AddIntConstant(module, "FRAME_HEAD_SIZE", FRAME_HEAD_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "FRAME_EVENT", FRAME_EVENT) < 0 ||
        PyModule_AddIntConstant(module, "MAX_PAYLOAD", MAX_PAYLOAD) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "rudder_fast._speedups",
    .m_doc = "The sender's per-event loops in C; see rudder_fast/_speedups.c.",
    .m_size = 0,
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    static int tables_made = 0;
    if (!tables_made) {
        crc_init();
        tables_made = 1;
    }
    return PyModuleDef_Init(&speedups_module);
}
