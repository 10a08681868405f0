/*
 * fakenvml.c — a simulated libnvidia-ml.so.1 for nodeagent's tests.
 *
 * It exports the NVML entry points that pynvml (nvidia-ml-py) calls for GPU detection and
 * XID events, with the real prototypes from NVIDIA's nvml.h, and answers from a JSON
 * profile named by $FAKE_NVML_PROFILE (format: tests/fakenvml/README.md). The profile is
 * re-read at every nvmlInit*, so a test can change the node between two detections.
 * XID events come from the profile's "xid_events" (delivered after_ms after the event
 * set is created) and from lines "GPU_INDEX XID" appended at run time to $FAKE_NVML_EVENTS.
 * The fabric can change with time too ("fabric_events", after_ms since the node booted,
 * which is when the profile file was last written), and so can a GPU's recovery action
 * ("recovery_events", delivered as nvmlEventTypeGpuRecoveryAction events as they fall due).
 *
 * Written for these tests; it contains no NVIDIA code beyond including nvml.h.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "nvml.h"

#define MAX_GPUS 64
#define MAX_MIG 8
#define MAX_XID 64

/* ------------------------------------------------------------------ a tiny JSON reader */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jval {
    jtype type;
    double num;
    int boolean;
    char *str;          /* J_STR */
    struct jval **items; /* J_ARR values, J_OBJ values */
    char **keys;         /* J_OBJ keys */
    int n;
} jval;

typedef struct {
    const char *s;
    int ok;
} jparser;

static void j_free(jval *v) {
    if (!v) return;
    for (int i = 0; i < v->n; i++) {
        j_free(v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
    free(v);
}

static void j_ws(jparser *p) {
    while (*p->s && isspace((unsigned char)*p->s)) p->s++;
}

static jval *j_new(jtype t) {
    jval *v = calloc(1, sizeof *v);
    v->type = t;
    return v;
}

static jval *j_value(jparser *p);

static char *j_string(jparser *p) {
    if (*p->s != '"') { p->ok = 0; return NULL; }
    p->s++;
    size_t cap = 32, len = 0;
    char *out = malloc(cap);
    while (*p->s && *p->s != '"') {
        char c = *p->s++;
        if (c == '\\') {
            char e = *p->s;
            if (!e) break; /* a backslash at the very end: unterminated string */
            p->s++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                /* keep it simple: \uXXXX below 0x80 as is, others as UTF-8 (BMP only) */
                unsigned code = 0;
                for (int i = 0; i < 4 && isxdigit((unsigned char)*p->s); i++, p->s++)
                    code = code * 16 + (unsigned)(isdigit((unsigned char)*p->s)
                                                      ? *p->s - '0'
                                                      : (tolower((unsigned char)*p->s) - 'a' + 10));
                char buf[3];
                int nb = 0;
                if (code < 0x80) buf[nb++] = (char)code;
                else if (code < 0x800) {
                    buf[nb++] = (char)(0xC0 | (code >> 6));
                    buf[nb++] = (char)(0x80 | (code & 0x3F));
                } else {
                    buf[nb++] = (char)(0xE0 | (code >> 12));
                    buf[nb++] = (char)(0x80 | ((code >> 6) & 0x3F));
                    buf[nb++] = (char)(0x80 | (code & 0x3F));
                }
                for (int i = 0; i < nb; i++) {
                    if (len + 2 > cap) out = realloc(out, cap *= 2);
                    out[len++] = buf[i];
                }
                continue;
            }
            default: c = e;
            }
        }
        if (len + 2 > cap) out = realloc(out, cap *= 2);
        out[len++] = c;
    }
    if (*p->s != '"') { p->ok = 0; free(out); return NULL; }
    p->s++;
    out[len] = 0;
    return out;
}

static jval *j_value(jparser *p) {
    j_ws(p);
    if (!p->ok) return NULL;
    char c = *p->s;
    if (c == '{' || c == '[') {
        int obj = c == '{';
        jval *v = j_new(obj ? J_OBJ : J_ARR);
        p->s++;
        j_ws(p);
        if (*p->s == (obj ? '}' : ']')) { p->s++; return v; }
        for (;;) {
            char *key = NULL;
            if (obj) {
                j_ws(p);
                key = j_string(p);
                j_ws(p);
                if (!p->ok || *p->s != ':') { p->ok = 0; free(key); j_free(v); return NULL; }
                p->s++;
            }
            jval *item = j_value(p);
            if (!p->ok) { free(key); j_free(item); j_free(v); return NULL; }
            v->items = realloc(v->items, sizeof(jval *) * (size_t)(v->n + 1));
            if (obj) v->keys = realloc(v->keys, sizeof(char *) * (size_t)(v->n + 1));
            v->items[v->n] = item;
            if (obj) v->keys[v->n] = key;
            v->n++;
            j_ws(p);
            if (*p->s == ',') { p->s++; continue; }
            if (*p->s == (obj ? '}' : ']')) { p->s++; return v; }
            p->ok = 0;
            j_free(v);
            return NULL;
        }
    }
    if (c == '"') {
        jval *v = j_new(J_STR);
        v->str = j_string(p);
        return v;
    }
    if (!strncmp(p->s, "true", 4)) { p->s += 4; jval *v = j_new(J_BOOL); v->boolean = 1; return v; }
    if (!strncmp(p->s, "false", 5)) { p->s += 5; return j_new(J_BOOL); }
    if (!strncmp(p->s, "null", 4)) { p->s += 4; return j_new(J_NULL); }
    if (c == '-' || isdigit((unsigned char)c)) {
        char *end;
        jval *v = j_new(J_NUM);
        v->num = strtod(p->s, &end);
        p->s = end;
        return v;
    }
    p->ok = 0;
    return NULL;
}

static jval *j_get(const jval *obj, const char *key) {
    if (!obj || obj->type != J_OBJ) return NULL;
    for (int i = 0; i < obj->n; i++)
        if (!strcmp(obj->keys[i], key)) return obj->items[i];
    return NULL;
}

static const char *j_str(const jval *obj, const char *key, const char *dflt) {
    const jval *v = j_get(obj, key);
    return v && v->type == J_STR ? v->str : dflt;
}

static long long j_int(const jval *obj, const char *key, long long dflt) {
    const jval *v = j_get(obj, key);
    if (!v) return dflt;
    if (v->type == J_NUM) return (long long)v->num;
    if (v->type == J_STR) return strtoll(v->str, NULL, 0); /* "0x20B210DE" */
    return dflt;
}

/* ------------------------------------------------------------------ the simulated node */

/*
 * Handles are stable addresses (one per GPU index and MIG slot) that carry only indices;
 * every call looks the index up in the profile loaded now. So a handle taken before a
 * reload answers from the new profile, like a real handle after the GPU changed.
 */
struct nvmlDevice_st {
    int gpu; /* index of the physical GPU */
    int mig; /* -1 for the GPU itself, else the MIG device's slot */
};

static struct nvmlDevice_st g_handles[MAX_GPUS];
static struct nvmlDevice_st g_mig_handles[MAX_GPUS][MAX_MIG];

static jval *g_profile;          /* the parsed profile, NULL when not initialised */
static const jval *g_gpus[MAX_GPUS]; /* g_profile's "gpus" items */
static int g_ngpus;
static int g_refcount; /* NVML counts nvmlInit calls; only the last nvmlShutdown shuts down */
static struct timespec g_boot; /* when the node booted: the profile file's mtime */

/*
 * One recursive lock around every entry point: a watcher thread may wait for events while
 * another thread re-initialises (and so re-reads the profile). Recursive because entry
 * points call each other. LOCKED releases it when the enclosing scope ends.
 */
static pthread_mutex_t g_mu = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

static void unlock_mu(pthread_mutex_t **m) { pthread_mutex_unlock(*m); }

#define LOCKED                                                                 \
    pthread_mutex_t *_held __attribute__((cleanup(unlock_mu), unused)) = &g_mu; \
    pthread_mutex_lock(_held)

typedef struct {
    const char *name;
    nvmlReturn_t code;
    const char *text; /* what the real nvmlErrorString says */
} errinfo;

static const errinfo ERRORS[] = {
    {"NVML_SUCCESS", NVML_SUCCESS, "Success"},
    {"NVML_ERROR_UNINITIALIZED", NVML_ERROR_UNINITIALIZED, "Uninitialized"},
    {"NVML_ERROR_INVALID_ARGUMENT", NVML_ERROR_INVALID_ARGUMENT, "Invalid Argument"},
    {"NVML_ERROR_NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED, "Not Supported"},
    {"NVML_ERROR_NO_PERMISSION", NVML_ERROR_NO_PERMISSION, "Insufficient Permissions"},
    {"NVML_ERROR_ALREADY_INITIALIZED", NVML_ERROR_ALREADY_INITIALIZED, "Already Initialized"},
    {"NVML_ERROR_NOT_FOUND", NVML_ERROR_NOT_FOUND, "Not Found"},
    {"NVML_ERROR_INSUFFICIENT_SIZE", NVML_ERROR_INSUFFICIENT_SIZE, "Insufficient Size"},
    {"NVML_ERROR_INSUFFICIENT_POWER", NVML_ERROR_INSUFFICIENT_POWER, "Insufficient External Power"},
    {"NVML_ERROR_DRIVER_NOT_LOADED", NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"},
    {"NVML_ERROR_TIMEOUT", NVML_ERROR_TIMEOUT, "Timeout"},
    {"NVML_ERROR_IRQ_ISSUE", NVML_ERROR_IRQ_ISSUE, "Interrupt Request Issue"},
    {"NVML_ERROR_LIBRARY_NOT_FOUND", NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found"},
    {"NVML_ERROR_FUNCTION_NOT_FOUND", NVML_ERROR_FUNCTION_NOT_FOUND, "Function Not Found"},
    {"NVML_ERROR_CORRUPTED_INFOROM", NVML_ERROR_CORRUPTED_INFOROM, "Corrupted infoROM"},
    {"NVML_ERROR_GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST, "GPU is lost"},
    {"NVML_ERROR_RESET_REQUIRED", NVML_ERROR_RESET_REQUIRED, "GPU requires restart"},
    {"NVML_ERROR_OPERATING_SYSTEM", NVML_ERROR_OPERATING_SYSTEM,
     "The operating system has blocked the request."},
    {"NVML_ERROR_LIB_RM_VERSION_MISMATCH", NVML_ERROR_LIB_RM_VERSION_MISMATCH,
     "RM has detected an NVML/RM version mismatch."},
    {"NVML_ERROR_IN_USE", NVML_ERROR_IN_USE, "In use by another client"},
    {"NVML_ERROR_MEMORY", NVML_ERROR_MEMORY, "Insufficient Memory"},
    {"NVML_ERROR_NO_DATA", NVML_ERROR_NO_DATA, "No data"},
    /* Not in pynvml's table of texts: nvml.h's own description of each. */
    {"NVML_ERROR_INSUFFICIENT_RESOURCES", NVML_ERROR_INSUFFICIENT_RESOURCES,
     "Ran out of critical resources, other than memory"},
    {"NVML_ERROR_ARGUMENT_VERSION_MISMATCH", NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
     "The provided version is invalid/unsupported"},
    {"NVML_ERROR_NOT_READY", NVML_ERROR_NOT_READY, "The system is not ready for the request"},
    {"NVML_ERROR_INVALID_STATE", NVML_ERROR_INVALID_STATE,
     "Resource not in correct state to perform requested operation"},
    {"NVML_ERROR_UNKNOWN", NVML_ERROR_UNKNOWN, "Unknown Error"},
};
#define NERRORS (sizeof ERRORS / sizeof *ERRORS)

/* An error name from the profile as its code; names NVML does not have are UNKNOWN. */
static nvmlReturn_t code_of(const char *name) {
    if (!name) return NVML_SUCCESS;
    for (size_t i = 0; i < NERRORS; i++)
        if (!strcmp(ERRORS[i].name, name)) return ERRORS[i].code;
    fprintf(stderr, "fakenvml: unknown error name %s, using NVML_ERROR_UNKNOWN\n", name);
    return NVML_ERROR_UNKNOWN;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    for (size_t i = 0; i < NERRORS; i++)
        if (ERRORS[i].code == result) return ERRORS[i].text;
    return "Unknown Error";
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0, n;
    char *buf = malloc(cap);
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    buf[len] = 0;
    return buf;
}

static void unload(void) {
    j_free(g_profile);
    g_profile = NULL;
    g_ngpus = 0;
    memset(g_gpus, 0, sizeof g_gpus);
}

#ifndef FAKE_NVML_DEFAULT_PROFILE
#define FAKE_NVML_DEFAULT_PROFILE NULL
#endif

/* (Re-)read $FAKE_NVML_PROFILE: what nvmlInit finds on the node right now. */
static nvmlReturn_t load(void) {
    unload();
    const char *path = getenv("FAKE_NVML_PROFILE");
    /* A build for a booted test machine names its profile at compile time (services do
       not inherit the test's environment); the variable still wins. */
    static const char *default_profile = FAKE_NVML_DEFAULT_PROFILE;
    if ((!path || !*path) && default_profile) path = default_profile;
    /* No profile named or readable: as if the kernel module were not loaded. */
    if (!path || !*path) return NVML_ERROR_DRIVER_NOT_LOADED;
    char *text = read_file(path);
    if (!text) return NVML_ERROR_DRIVER_NOT_LOADED;
    struct stat st;
    if (stat(path, &st) == 0) g_boot = st.st_mtim;
    jparser p = {text, 1};
    g_profile = j_value(&p);
    j_ws(&p);
    int trailing = p.ok && *p.s;
    free(text);
    if (!p.ok || trailing || !g_profile || g_profile->type != J_OBJ) {
        fprintf(stderr, "fakenvml: %s: not a valid JSON object\n", path);
        unload();
        return NVML_ERROR_UNKNOWN;
    }
    nvmlReturn_t init_error = code_of(j_str(g_profile, "init_error", NULL));
    if (init_error != NVML_SUCCESS) {
        unload();
        return init_error;
    }
    const jval *gpus = j_get(g_profile, "gpus");
    for (int i = 0; gpus && gpus->type == J_ARR && i < gpus->n && i < MAX_GPUS; i++) {
        g_gpus[i] = gpus->items[i];
        g_ngpus = i + 1;
    }
    return NVML_SUCCESS;
}

__attribute__((constructor)) static void init_handles(void) {
    for (int i = 0; i < MAX_GPUS; i++) {
        g_handles[i].gpu = i;
        g_handles[i].mig = -1;
        for (int m = 0; m < MAX_MIG; m++) {
            g_mig_handles[i][m].gpu = i;
            g_mig_handles[i][m].mig = m;
        }
    }
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    LOCKED;
    nvmlReturn_t r = load();
    if (r == NVML_SUCCESS)
        g_refcount++;
    else
        g_refcount = 0; /* the node is gone: earlier initialisations are void too */
    return r;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    LOCKED;
    if (g_refcount == 0) return NVML_ERROR_UNINITIALIZED;
    if (--g_refcount == 0) unload();
    return NVML_SUCCESS;
}

#define NEED_INIT                                        \
    do {                                                 \
        if (g_refcount == 0) return NVML_ERROR_UNINITIALIZED; \
    } while (0)

static nvmlReturn_t put_str(char *buf, unsigned int len, const char *value) {
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    if (!value) return NVML_ERROR_NOT_SUPPORTED;
    if (strlen(value) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(buf, value);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    LOCKED;
    NEED_INIT;
    return put_str(version, length, j_str(g_profile, "driver_version", NULL));
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    LOCKED;
    NEED_INIT;
    return put_str(version, length, j_str(g_profile, "nvml_version", NULL));
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion) {
    LOCKED;
    NEED_INIT;
    if (!cudaDriverVersion) return NVML_ERROR_INVALID_ARGUMENT;
    long long v = j_int(g_profile, "cuda_driver_version", -1);
    if (v < 0) return NVML_ERROR_NOT_SUPPORTED;
    *cudaDriverVersion = (int)v;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion) {
    return nvmlSystemGetCudaDriverVersion(cudaDriverVersion);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    LOCKED;
    NEED_INIT;
    if (!deviceCount) return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = (unsigned)g_ngpus;
    return NVML_SUCCESS;
}

static nvmlReturn_t gpu_error(int gpu) { return code_of(j_str(g_gpus[gpu], "error", NULL)); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    LOCKED;
    NEED_INIT;
    if ((int)index >= g_ngpus || !device) return NVML_ERROR_INVALID_ARGUMENT;
    /* Real NVML already fails here for a GPU that fell off the bus ("Unable to determine
     * the device handle for GPU ...: GPU is lost"). */
    nvmlReturn_t err = gpu_error((int)index);
    if (err != NVML_SUCCESS) return err;
    *device = &g_handles[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    LOCKED;
    NEED_INIT;
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < g_ngpus; i++) {
        const char *u = j_str(g_gpus[i], "uuid", NULL);
        if (u && !strcmp(u, uuid)) {
            nvmlReturn_t err = gpu_error(i);
            if (err != NVML_SUCCESS) return err;
            *device = &g_handles[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

/* The JSON of a handle (GPU or MIG device) after the per-GPU error check. */
static nvmlReturn_t lookup(nvmlDevice_t d, const jval **out) {
    NEED_INIT;
    if (!d || d->gpu < 0 || d->gpu >= g_ngpus) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t err = gpu_error(d->gpu);
    if (err != NVML_SUCCESS) return err;
    const jval *g = g_gpus[d->gpu];
    if (d->mig < 0) {
        *out = g;
        return NVML_SUCCESS;
    }
    const jval *migs = j_get(g, "mig_devices");
    if (!migs || migs->type != J_ARR || d->mig >= migs->n) return NVML_ERROR_INVALID_ARGUMENT;
    *out = migs->items[d->mig];
    return NVML_SUCCESS;
}

/* Start of every device query: take the lock, resolve the handle, return its error. */
#define DEVICE(d, j, ...)                                \
    LOCKED;                                              \
    const jval *j = NULL;                                \
    do {                                                 \
        nvmlReturn_t _r = lookup((d), &j);               \
        if (_r != NVML_SUCCESS) return _r;               \
        const void *_outs[] = {__VA_ARGS__};             \
        for (size_t _i = 0; _i < sizeof _outs / sizeof *_outs; _i++) \
            if (!_outs[_i]) return NVML_ERROR_INVALID_ARGUMENT;      \
    } while (0)

static int is_mig(nvmlDevice_t d) { return d->mig >= 0; }

static int mig_count(int gpu) {
    const jval *migs = j_get(g_gpus[gpu], "mig_devices");
    int n = migs && migs->type == J_ARR ? migs->n : 0;
    return n < MAX_MIG ? n : MAX_MIG;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    DEVICE(device, j, name);
    return put_str(name, length, j_str(j, "name", NULL));
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    DEVICE(device, j, uuid);
    return put_str(uuid, length, j_str(j, "uuid", NULL));
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    DEVICE(device, j, index);
    (void)j;
    if (is_mig(device)) return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned)device->gpu;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber) {
    DEVICE(device, j, minorNumber);
    if (is_mig(device)) return NVML_ERROR_NOT_SUPPORTED;
    *minorNumber = (unsigned)j_int(j, "minor_number", device->gpu);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    DEVICE(device, j, pci);
    if (is_mig(device)) return NVML_ERROR_NOT_SUPPORTED;
    memset(pci, 0, sizeof *pci);
    const char *bus = j_str(j, "pci_bus_id", "00000000:00:00.0");
    unsigned dom = 0, b = 0, dev = 0, fn = 0;
    if (sscanf(bus, "%x:%x:%x.%x", &dom, &b, &dev, &fn) != 4)
        fprintf(stderr, "fakenvml: bad pci_bus_id %s\n", bus);
    snprintf(pci->busId, sizeof pci->busId, "%s", bus);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.%X", dom & 0xFFFF, b, dev,
             fn);
    pci->domain = dom;
    pci->bus = b;
    pci->device = dev;
    pci->pciDeviceId = (unsigned)j_int(j, "pci_device_id", 0);
    pci->pciSubSystemId = (unsigned)j_int(j, "pci_subsystem_id", 0);
    return NVML_SUCCESS;
}

static unsigned long long mib(const jval *j, const char *key) {
    return (unsigned long long)j_int(j, key, 0) * 1024ULL * 1024ULL;
}

/*
 * "call_errors": {"<NVML function>": "<NVML error name>"} on a GPU makes that query fail
 * with that error (a signal NVML cannot read right now). Checked by the queries below.
 */
static nvmlReturn_t call_error(const jval *j, const char *fn) {
    return code_of(j_str(j_get(j, "call_errors"), fn, NULL));
}

#define CALL_ERROR(j, fn)                            \
    do {                                             \
        nvmlReturn_t _e = call_error((j), (fn));     \
        if (_e != NVML_SUCCESS) return _e;           \
    } while (0)

/* No "memory_total_mib" (GB10's unified memory): memory info is NOT_SUPPORTED. */
#define NEED_MEMORY(j, fn)                                                  \
    do {                                                                    \
        CALL_ERROR(j, fn);                                                  \
        if (!j_get((j), "memory_total_mib")) return NVML_ERROR_NOT_SUPPORTED; \
    } while (0)

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    DEVICE(device, j, memory);
    NEED_MEMORY(j, "nvmlDeviceGetMemoryInfo");
    memory->total = mib(j, "memory_total_mib");
    memory->used = mib(j, "memory_used_mib");
    memory->free = memory->total - memory->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    DEVICE(device, j, memory);
    NEED_MEMORY(j, "nvmlDeviceGetMemoryInfo_v2");
    if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = mib(j, "memory_total_mib");
    memory->reserved = 0;
    memory->used = mib(j, "memory_used_mib");
    memory->free = memory->total - memory->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    DEVICE(device, j, major, minor);
    /* A MIG device reports its parent's compute capability. */
    const char *cc = j_str(g_gpus[device->gpu], "compute_capability", NULL);
    if (!cc || sscanf(cc, "%d.%d", major, minor) != 2) return NVML_ERROR_NOT_SUPPORTED;
    (void)j;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device, nvmlDeviceArchitecture_t *arch) {
    DEVICE(device, j, arch);
    static const struct {
        const char *name;
        unsigned v;
    } ARCH[] = {
        {"kepler", NVML_DEVICE_ARCH_KEPLER}, {"maxwell", NVML_DEVICE_ARCH_MAXWELL},
        {"pascal", NVML_DEVICE_ARCH_PASCAL}, {"volta", NVML_DEVICE_ARCH_VOLTA},
        {"turing", NVML_DEVICE_ARCH_TURING}, {"ampere", NVML_DEVICE_ARCH_AMPERE},
        {"ada-lovelace", NVML_DEVICE_ARCH_ADA}, {"hopper", NVML_DEVICE_ARCH_HOPPER},
        {"blackwell", NVML_DEVICE_ARCH_BLACKWELL},
    };
    const char *name = j_str(g_gpus[device->gpu], "architecture", NULL);
    (void)j;
    *arch = NVML_DEVICE_ARCH_UNKNOWN;
    for (size_t i = 0; name && i < sizeof ARCH / sizeof *ARCH; i++)
        if (!strcmp(ARCH[i].name, name)) *arch = ARCH[i].v;
    return NVML_SUCCESS;
}

static unsigned mig_mode(const char *s) {
    return s && !strcmp(s, "enabled") ? NVML_DEVICE_MIG_ENABLE : NVML_DEVICE_MIG_DISABLE;
}

/* The GPU's "mig_mode" object; NULL where MIG is not supported (pre-Ampere, GeForce). */
static const jval *mig_of(nvmlDevice_t device, const jval *j) {
    return is_mig(device) ? NULL : j_get(j, "mig_mode");
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode,
                                  unsigned int *pendingMode) {
    DEVICE(device, j, currentMode, pendingMode);
    const jval *mode = mig_of(device, j);
    if (!mode) return NVML_ERROR_NOT_SUPPORTED;
    *currentMode = mig_mode(j_str(mode, "current", NULL));
    *pendingMode = mig_mode(j_str(mode, "pending", NULL));
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    DEVICE(device, j, count);
    if (!mig_of(device, j)) return NVML_ERROR_NOT_SUPPORTED;
    /* A100/H100 have 7 MIG slots; report at least as many as the profile lists. */
    int n = mig_count(device->gpu);
    *count = (unsigned)(n > 7 ? n : 7);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *migDevice) {
    DEVICE(device, j, migDevice);
    const jval *mode = mig_of(device, j);
    if (!mode) return NVML_ERROR_NOT_SUPPORTED;
    if (mig_mode(j_str(mode, "current", NULL)) != NVML_DEVICE_MIG_ENABLE)
        return NVML_ERROR_NOT_FOUND;
    if ((int)index >= mig_count(device->gpu)) return NVML_ERROR_NOT_FOUND; /* an empty slot */
    *migDevice = &g_mig_handles[device->gpu][index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice) {
    DEVICE(device, j, isMigDevice);
    (void)j;
    *isMigDevice = (unsigned)is_mig(device);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) {
    DEVICE(device, j, id);
    if (!is_mig(device)) return NVML_ERROR_INVALID_ARGUMENT;
    *id = (unsigned)j_int(j, "gpu_instance_id", 0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id) {
    DEVICE(device, j, id);
    if (!is_mig(device)) return NVML_ERROR_INVALID_ARGUMENT;
    *id = (unsigned)j_int(j, "compute_instance_id", 0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetAttributes_v2(nvmlDevice_t device, nvmlDeviceAttributes_t *attributes) {
    DEVICE(device, j, attributes);
    memset(attributes, 0, sizeof *attributes);
    attributes->multiprocessorCount = (unsigned)j_int(j, "multiprocessor_count", 0);
    attributes->gpuInstanceSliceCount = (unsigned)j_int(j, "gpu_instance_slices", 0);
    attributes->computeInstanceSliceCount = (unsigned)j_int(j, "compute_instance_slices", 0);
    attributes->memorySizeMB = mib(j, "memory_total_mib") / (1024ULL * 1024ULL);
    attributes->sharedCopyEngineCount = (unsigned)j_int(j, "shared_copy_engines", 0);
    attributes->sharedDecoderCount = (unsigned)j_int(j, "shared_decoders", 0);
    attributes->sharedEncoderCount = (unsigned)j_int(j, "shared_encoders", 0);
    attributes->sharedJpegCount = (unsigned)j_int(j, "shared_jpegs", 0);
    attributes->sharedOfaCount = (unsigned)j_int(j, "shared_ofas", 0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit) {
    DEVICE(device, j, limit);
    long long mw = j_int(j, "power_limit_mw", -1);
    if (is_mig(device) || mw < 0) return NVML_ERROR_NOT_SUPPORTED;
    *limit = (unsigned)mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit) {
    return nvmlDeviceGetPowerManagementLimit(device, limit);
}

/* ------------------------------------------------------------------ health signals */

/*
 * Each reads one key of the GPU's profile; an absent key means NVML answers
 * NOT_SUPPORTED (an older GPU, a GeForce, a GPU without an NVLink fabric).
 */

static double now_ms_since(const struct timespec *t0, clockid_t clock) {
    struct timespec now;
    clock_gettime(clock, &now);
    return (double)(now.tv_sec - t0->tv_sec) * 1e3 + (double)(now.tv_nsec - t0->tv_nsec) / 1e6;
}

/* A name from `names` as its index; -1 (with a line on stderr) for a name not there. */
static int index_of_name(const char *what, const char *name, const char *const *names, int n) {
    for (int i = 0; name && i < n; i++)
        if (!strcmp(names[i], name)) return i;
    fprintf(stderr, "fakenvml: unknown %s %s\n", what, name ? name : "(none)");
    return -1;
}

static const char *const FABRIC_STATES[] = {"not_supported", "not_started", "in_progress",
                                            "completed"};
static const char *const FABRIC_HEALTH[] = {"not_supported", "healthy", "unhealthy",
                                            "limited_capacity"};

typedef struct {
    unsigned char cluster_uuid[NVML_GPU_FABRIC_UUID_LEN];
    nvmlReturn_t status;
    unsigned int clique_id;
    unsigned char state;
    unsigned int health_mask;
    unsigned char health_summary;
} fabric_t;

/*
 * The GPU's fabric now: "fabric" ({"state", "status", optional "clique_id",
 * "cluster_uuid", "health_mask", "health_summary"}), its state and status replaced by the
 * latest top-level "fabric_events" entry ({"gpu" (absent: every GPU), "after_ms",
 * "state", "status"}) whose after_ms have passed since the node booted.
 */
static nvmlReturn_t fabric_of(const jval *j, int gpu, const char *fn, fabric_t *out) {
    CALL_ERROR(j, fn);
    const jval *f = j_get(j, "fabric");
    if (!f || f->type != J_OBJ) return NVML_ERROR_NOT_SUPPORTED;
    const char *state = j_str(f, "state", NULL);
    const char *status = j_str(f, "status", "NVML_SUCCESS");
    double up = now_ms_since(&g_boot, CLOCK_REALTIME), latest = -1;
    const jval *evs = j_get(g_profile, "fabric_events");
    for (int i = 0; evs && evs->type == J_ARR && i < evs->n; i++) {
        const jval *e = evs->items[i];
        double at = (double)j_int(e, "after_ms", 0);
        if (j_int(e, "gpu", gpu) != gpu || at > up || at < latest) continue;
        latest = at;
        state = j_str(e, "state", state);
        status = j_str(e, "status", status);
    }
    int s = index_of_name("fabric state", state, FABRIC_STATES, 4);
    if (s < 0) return NVML_ERROR_UNKNOWN;
    memset(out, 0, sizeof *out);
    out->state = (unsigned char)s;
    out->status = code_of(status);
    out->clique_id = (unsigned)j_int(f, "clique_id", 0);
    out->health_mask = (unsigned)j_int(f, "health_mask", 0);
    const char *health = j_str(f, "health_summary", NULL);
    int h = health ? index_of_name("fabric health summary", health, FABRIC_HEALTH, 4) : 0;
    out->health_summary = (unsigned char)(h < 0 ? 0 : h);
    /* "cluster_uuid": "9c6f5af3-53bf-49b5-a436-b66766c413c3"; absent: all zeroes */
    const char *u = j_str(f, "cluster_uuid", "");
    for (int i = 0; i < NVML_GPU_FABRIC_UUID_LEN && *u;) {
        unsigned byte;
        if (*u == '-') { u++; continue; }
        if (sscanf(u, "%2x", &byte) != 1) break;
        out->cluster_uuid[i++] = (unsigned char)byte;
        u += 2;
    }
    return NVML_SUCCESS;
}

/* The newest nvmlGpuFabricInfo struct version this driver knows: the profile's
   "fabric_info_version" (3 by default; 2 like an older driver; 1: no ...InfoV at all). */
static long long fabric_version(void) { return j_int(g_profile, "fabric_info_version", 3); }

nvmlReturn_t nvmlDeviceGetGpuFabricInfo(nvmlDevice_t device, nvmlGpuFabricInfo_t *info) {
    DEVICE(device, j, info);
    fabric_t f;
    nvmlReturn_t r = fabric_of(j, device->gpu, "nvmlDeviceGetGpuFabricInfo", &f);
    if (r != NVML_SUCCESS) return r;
    memset(info, 0, sizeof *info);
    memcpy(info->clusterUuid, f.cluster_uuid, sizeof info->clusterUuid);
    info->status = f.status;
    info->cliqueId = f.clique_id;
    info->state = f.state;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetGpuFabricInfoV(nvmlDevice_t device, nvmlGpuFabricInfoV_t *info) {
    DEVICE(device, j, info);
    /* pynvml reports a missing entry point as FUNCTION_NOT_FOUND; so does this. */
    if (fabric_version() < 2) return NVML_ERROR_FUNCTION_NOT_FOUND;
    unsigned int version = info->version;
    int v3 = version == nvmlGpuFabricInfo_v3;
    if (!(v3 && fabric_version() >= 3) && version != nvmlGpuFabricInfo_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    fabric_t f;
    nvmlReturn_t r = fabric_of(j, device->gpu, "nvmlDeviceGetGpuFabricInfoV", &f);
    if (r != NVML_SUCCESS) return r;
    /* v2 is v3 without its last member: fill v2's bytes only when v2 was asked for. */
    memset(info, 0, v3 ? sizeof(nvmlGpuFabricInfo_v3_t) : sizeof(nvmlGpuFabricInfo_v2_t));
    info->version = version;
    memcpy(info->clusterUuid, f.cluster_uuid, sizeof info->clusterUuid);
    info->status = f.status;
    info->cliqueId = f.clique_id;
    info->state = f.state;
    info->healthMask = f.health_mask;
    if (v3) info->healthSummary = f.health_summary;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows,
                                       unsigned int *uncRows, unsigned int *isPending,
                                       unsigned int *failureOccurred) {
    DEVICE(device, j, corrRows, uncRows, isPending, failureOccurred);
    CALL_ERROR(j, "nvmlDeviceGetRemappedRows");
    const jval *rows = j_get(j, "remapped_rows");
    if (!rows || rows->type != J_OBJ) return NVML_ERROR_NOT_SUPPORTED;
    const jval *pending = j_get(rows, "pending"), *failure = j_get(rows, "failure");
    *corrRows = (unsigned)j_int(rows, "correctable", 0);
    *uncRows = (unsigned)j_int(rows, "uncorrectable", 0);
    *isPending = (unsigned)(pending && pending->type == J_BOOL && pending->boolean);
    *failureOccurred = (unsigned)(failure && failure->type == J_BOOL && failure->boolean);
    return NVML_SUCCESS;
}

static const char *const RECOVERY_ACTIONS[] = {
    "none",     "gpu_reset",           "node_reboot", "drain_p2p", "drain_and_reset",
    "recover_imex_domain", "bus_reset", "system_reboot"};

/*
 * The GPU's recovery action now: "recovery_action", replaced by the latest top-level
 * "recovery_events" entry ({"gpu", "after_ms", "action"}) whose after_ms have passed since
 * the node booted. NULL: the field is not supported.
 */
static const char *recovery_action_of(const jval *j, int gpu) {
    const char *action = j_str(j, "recovery_action", NULL);
    double up = now_ms_since(&g_boot, CLOCK_REALTIME), latest = -1;
    const jval *evs = j_get(g_profile, "recovery_events");
    for (int i = 0; evs && evs->type == J_ARR && i < evs->n; i++) {
        const jval *e = evs->items[i];
        double at = (double)j_int(e, "after_ms", 0);
        if (j_int(e, "gpu", -1) != gpu || at > up || at < latest) continue;
        latest = at;
        action = j_str(e, "action", action);
    }
    return action;
}

nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount,
                                      nvmlFieldValue_t *values) {
    DEVICE(device, j, values);
    CALL_ERROR(j, "nvmlDeviceGetFieldValues");
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    /* Each field answers on its own: one NVML does not have says so in its nvmlReturn. */
    for (int i = 0; i < valuesCount; i++) {
        nvmlFieldValue_t *v = &values[i];
        v->timestamp = (long long)now.tv_sec * 1000000 + now.tv_nsec / 1000;
        v->latencyUsec = 0;
        v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        const char *action = recovery_action_of(j, device->gpu);
        if (v->fieldId == NVML_FI_DEV_GET_GPU_RECOVERY_ACTION && action) {
            int a = index_of_name("recovery action", action, RECOVERY_ACTIONS, 8);
            v->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            v->value.uiVal = (unsigned)a;
            v->nvmlReturn = a < 0 ? NVML_ERROR_UNKNOWN : NVML_SUCCESS;
        }
    }
    return NVML_SUCCESS;
}

/* A boolean key as an nvmlEnableState_t; NOT_SUPPORTED when absent. */
static nvmlReturn_t enable_state(const jval *j, const char *key, const char *fn,
                                 nvmlEnableState_t *out) {
    CALL_ERROR(j, fn);
    const jval *v = j_get(j, key);
    if (!v || v->type != J_BOOL) return NVML_ERROR_NOT_SUPPORTED;
    *out = v->boolean ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device,
                                                    nvmlEnableState_t *isPending) {
    DEVICE(device, j, isPending);
    return enable_state(j, "retired_pages_pending", "nvmlDeviceGetRetiredPagesPendingStatus",
                        isPending);
}

nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t device, nvmlEnableState_t *mode) {
    DEVICE(device, j, mode);
    return enable_state(j, "persistence_mode", "nvmlDeviceGetPersistenceMode", mode);
}

/* "virtualization_mode": none|passthrough|vgpu|host_vgpu|host_vsga (nvml.h's order). */
nvmlReturn_t nvmlDeviceGetVirtualizationMode(nvmlDevice_t device,
                                             nvmlGpuVirtualizationMode_t *mode) {
    static const char *const MODES[] = {"none", "passthrough", "vgpu", "host_vgpu", "host_vsga"};
    DEVICE(device, j, mode);
    CALL_ERROR(j, "nvmlDeviceGetVirtualizationMode");
    const char *name = j_str(j, "virtualization_mode", NULL);
    if (is_mig(device) || !name) return NVML_ERROR_NOT_SUPPORTED;
    int m = index_of_name("virtualization mode", name, MODES, 5);
    if (m < 0) return NVML_ERROR_UNKNOWN;
    *mode = (nvmlGpuVirtualizationMode_t)m;
    return NVML_SUCCESS;
}

/* A numeric key; NOT_SUPPORTED when absent. */
static nvmlReturn_t number(const jval *j, const char *key, const char *fn, long long *out) {
    CALL_ERROR(j, fn);
    const jval *v = j_get(j, key);
    if (!v || v->type != J_NUM) return NVML_ERROR_NOT_SUPPORTED;
    *out = (long long)v->num;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, nvmlMemoryErrorType_t errorType,
                                         nvmlEccCounterType_t counterType,
                                         unsigned long long *eccCounts) {
    DEVICE(device, j, eccCounts);
    /* The profile has the volatile uncorrected count only; no other counter to answer. */
    if (errorType != NVML_MEMORY_ERROR_TYPE_UNCORRECTED || counterType != NVML_VOLATILE_ECC)
        return NVML_ERROR_NOT_SUPPORTED;
    long long n;
    nvmlReturn_t r = number(j, "ecc_volatile_uncorrectable", "nvmlDeviceGetTotalEccErrors", &n);
    if (r == NVML_SUCCESS) *eccCounts = (unsigned long long)n;
    return r;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    DEVICE(device, j, utilization);
    long long pct;
    nvmlReturn_t r = number(j, "utilization_gpu_pct", "nvmlDeviceGetUtilizationRates", &pct);
    if (r != NVML_SUCCESS) return r;
    utilization->gpu = (unsigned)pct;
    utilization->memory = (unsigned)j_int(j, "utilization_memory_pct", 0);
    return NVML_SUCCESS;
}

static nvmlReturn_t gpu_temperature(const jval *j, nvmlTemperatureSensors_t sensor,
                                    const char *fn, long long *out) {
    if (sensor != NVML_TEMPERATURE_GPU) return NVML_ERROR_NOT_SUPPORTED;
    return number(j, "temperature_c", fn, out);
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensorType,
                                      unsigned int *temp) {
    DEVICE(device, j, temp);
    long long c;
    nvmlReturn_t r = gpu_temperature(j, sensorType, "nvmlDeviceGetTemperature", &c);
    if (r == NVML_SUCCESS) *temp = (unsigned)c;
    return r;
}

nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t device, nvmlTemperature_t *temperature) {
    DEVICE(device, j, temperature);
    if (temperature->version != nvmlTemperature_v1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    long long c;
    nvmlReturn_t r =
        gpu_temperature(j, temperature->sensorType, "nvmlDeviceGetTemperatureV", &c);
    if (r == NVML_SUCCESS) temperature->temperature = (int)c;
    return r;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    DEVICE(device, j, power);
    long long mw;
    nvmlReturn_t r = number(j, "power_usage_mw", "nvmlDeviceGetPowerUsage", &mw);
    if (r == NVML_SUCCESS) *power = (unsigned)mw;
    return r;
}

/* "clocks_event_reasons": ["hw_slowdown", ...] in nvmlClocksEventReason* bit order. */
static const char *const CLOCK_EVENTS[] = {
    "gpu_idle",   "applications_clocks", "sw_power_cap",   "hw_slowdown",   "sync_boost",
    "sw_thermal", "hw_thermal",          "hw_power_brake", "display_clocks"};

static nvmlReturn_t clock_events(const jval *j, const char *fn, unsigned long long *mask) {
    CALL_ERROR(j, fn);
    const jval *list = j_get(j, "clocks_event_reasons");
    if (!list || list->type != J_ARR) return NVML_ERROR_NOT_SUPPORTED;
    *mask = 0;
    for (int i = 0; i < list->n; i++) {
        const jval *name = list->items[i];
        int bit = index_of_name("clocks event reason", name->type == J_STR ? name->str : NULL,
                                CLOCK_EVENTS, 9);
        if (bit < 0) return NVML_ERROR_UNKNOWN;
        *mask |= 1ULL << bit;
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device,
                                                    unsigned long long *clocksEventReasons) {
    DEVICE(device, j, clocksEventReasons);
    return clock_events(j, "nvmlDeviceGetCurrentClocksEventReasons", clocksEventReasons);
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device,
                                                       unsigned long long *clocksThrottleReasons) {
    DEVICE(device, j, clocksThrottleReasons);
    return clock_events(j, "nvmlDeviceGetCurrentClocksThrottleReasons", clocksThrottleReasons);
}

/* ------------------------------------------------------------------ XID events */

struct nvmlEventSet_st {
    struct timespec created;
    struct timespec created_real;            /* the same moment on the boot's clock */
    unsigned long long registered[MAX_GPUS]; /* event type mask per GPU */
    int delivered[MAX_XID];                  /* profile xid_events already delivered */
    int recovery_delivered[MAX_XID];         /* profile recovery_events already delivered */
    long events_offset;                      /* how much of $FAKE_NVML_EVENTS was read */
};

static double since_ms(const struct timespec *t0) { return now_ms_since(t0, CLOCK_MONOTONIC); }

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    LOCKED;
    NEED_INIT;
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    struct nvmlEventSet_st *s = calloc(1, sizeof *s);
    clock_gettime(CLOCK_MONOTONIC, &s->created);
    clock_gettime(CLOCK_REALTIME, &s->created_real);
    /* Only events appended after the set exists are delivered, as with a real driver. */
    const char *path = getenv("FAKE_NVML_EVENTS");
    FILE *f = path && *path ? fopen(path, "rb") : NULL;
    if (f) {
        fseek(f, 0, SEEK_END);
        s->events_offset = ftell(f);
        fclose(f);
    }
    *set = s;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    LOCKED;
    NEED_INIT;
    free(set);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types) {
    DEVICE(device, j, types);
    *types = nvmlEventTypeXidCriticalError | nvmlEventTypeSingleBitEccError |
             nvmlEventTypeDoubleBitEccError;
    /* A driver that has the recovery-action field has its event too. */
    if (recovery_action_of(j, device->gpu)) *types |= nvmlEventTypeGpuRecoveryAction;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
                                      nvmlEventSet_t set) {
    DEVICE(device, j, set);
    (void)j;
    if (is_mig(device)) return NVML_ERROR_INVALID_ARGUMENT;
    set->registered[device->gpu] |= types;
    return NVML_SUCCESS;
}

/* Fill *data with an event of `type` on `gpu` (eventData: the XID, 0 for other types);
   0 when that GPU did not register for the type. */
static int fill(nvmlEventSet_t set, int gpu, unsigned long long type, long long xid,
                nvmlEventData_t *data) {
    if (gpu < 0 || gpu >= g_ngpus) return 0;
    if (!(set->registered[gpu] & type)) return 0;
    memset(data, 0, sizeof *data);
    data->device = &g_handles[gpu];
    data->eventType = type;
    data->eventData = (unsigned long long)xid;
    data->gpuInstanceId = 0xFFFFFFFF; /* not attributed to a MIG instance */
    data->computeInstanceId = 0xFFFFFFFF;
    return 1;
}

/* One pending event, if any: profile events first, then the run-time events file. */
static int next_event(nvmlEventSet_t set, nvmlEventData_t *data) {
    const jval *evs = j_get(g_profile, "xid_events");
    for (int i = 0; evs && evs->type == J_ARR && i < evs->n && i < MAX_XID; i++) {
        if (set->delivered[i]) continue;
        const jval *e = evs->items[i];
        if (since_ms(&set->created) < (double)j_int(e, "after_ms", 0)) continue;
        set->delivered[i] = 1;
        if (fill(set, (int)j_int(e, "gpu", -1), nvmlEventTypeXidCriticalError,
                 j_int(e, "xid", 999), data))
            return 1;
    }
    /* A recovery_events entry that falls due while the set exists: one event, data 0. */
    evs = j_get(g_profile, "recovery_events");
    double up = now_ms_since(&g_boot, CLOCK_REALTIME);
    double set_at = up - now_ms_since(&set->created_real, CLOCK_REALTIME);
    for (int i = 0; evs && evs->type == J_ARR && i < evs->n && i < MAX_XID; i++) {
        if (set->recovery_delivered[i]) continue;
        const jval *e = evs->items[i];
        double at = (double)j_int(e, "after_ms", 0);
        if (at > up) continue;
        set->recovery_delivered[i] = 1;
        if (at < set_at) continue; /* changed before the set existed: no event for it */
        if (fill(set, (int)j_int(e, "gpu", -1), nvmlEventTypeGpuRecoveryAction, 0, data))
            return 1;
    }
    const char *path = getenv("FAKE_NVML_EVENTS");
    FILE *f = path && *path ? fopen(path, "rb") : NULL;
    if (!f) return 0;
    int found = 0;
    if (fseek(f, set->events_offset, SEEK_SET) == 0) {
        char line[128];
        while (!found && fgets(line, sizeof line, f)) {
            if (!strchr(line, '\n')) break; /* a line still being written: read it next time */
            set->events_offset = ftell(f);
            int gpu;
            long long xid;
            if (sscanf(line, "%d %lld", &gpu, &xid) == 2)
                found = fill(set, gpu, nvmlEventTypeXidCriticalError, xid, data);
        }
    }
    fclose(f);
    return found;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                 unsigned int timeoutms) {
    if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        {
            LOCKED; /* held while looking, never while sleeping */
            NEED_INIT;
            if (next_event(set, data)) return NVML_SUCCESS;
        }
        double left = (double)timeoutms - since_ms(&start);
        if (left <= 0) return NVML_ERROR_TIMEOUT;
        /* Poll in steps of at most 10 ms: no busy loop, and the timeout is kept. */
        usleep((useconds_t)(left < 10 ? left * 1000 : 10 * 1000));
    }
}
