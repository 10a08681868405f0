/*
 * fakenvml.c — a simulated libnvidia-ml.so.1 for nodeagent's tests.
 *
 * It exports the NVML entry points that pynvml (nvidia-ml-py) calls for GPU detection and
 * XID events, with the real prototypes from NVIDIA's nvml.h, and answers from a JSON
 * profile named by $FAKE_NVML_PROFILE (format: tests/fakenvml/README.md). The profile is
 * re-read at every nvmlInit*, so a test can change the node between two detections.
 * XID events come from the profile's "xid_events" (delivered after_ms after the event
 * set is created) and from lines "GPU_INDEX XID" appended at run time to $FAKE_NVML_EVENTS.
 *
 * Written for these tests; it contains no NVIDIA code beyond including nvml.h.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
            char e = *p->s++;
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

struct nvmlDevice_st {
    int gpu;  /* index of the physical GPU */
    int mig;  /* -1 for the GPU itself, else the MIG device's slot */
};

typedef struct {
    const jval *json;
    struct nvmlDevice_st handle;
    struct nvmlDevice_st mig_handles[MAX_MIG];
    int n_mig;
} gpu_t;

static jval *g_profile;
static gpu_t g_gpus[MAX_GPUS];
static int g_ngpus;
static int g_initialized;

typedef struct { const char *name; nvmlReturn_t code; } errname;
static const errname ERRORS[] = {
    {"NVML_SUCCESS", NVML_SUCCESS},
    {"NVML_ERROR_UNINITIALIZED", NVML_ERROR_UNINITIALIZED},
    {"NVML_ERROR_INVALID_ARGUMENT", NVML_ERROR_INVALID_ARGUMENT},
    {"NVML_ERROR_NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED},
    {"NVML_ERROR_NO_PERMISSION", NVML_ERROR_NO_PERMISSION},
    {"NVML_ERROR_ALREADY_INITIALIZED", NVML_ERROR_ALREADY_INITIALIZED},
    {"NVML_ERROR_NOT_FOUND", NVML_ERROR_NOT_FOUND},
    {"NVML_ERROR_INSUFFICIENT_SIZE", NVML_ERROR_INSUFFICIENT_SIZE},
    {"NVML_ERROR_INSUFFICIENT_POWER", NVML_ERROR_INSUFFICIENT_POWER},
    {"NVML_ERROR_DRIVER_NOT_LOADED", NVML_ERROR_DRIVER_NOT_LOADED},
    {"NVML_ERROR_TIMEOUT", NVML_ERROR_TIMEOUT},
    {"NVML_ERROR_IRQ_ISSUE", NVML_ERROR_IRQ_ISSUE},
    {"NVML_ERROR_LIBRARY_NOT_FOUND", NVML_ERROR_LIBRARY_NOT_FOUND},
    {"NVML_ERROR_FUNCTION_NOT_FOUND", NVML_ERROR_FUNCTION_NOT_FOUND},
    {"NVML_ERROR_CORRUPTED_INFOROM", NVML_ERROR_CORRUPTED_INFOROM},
    {"NVML_ERROR_GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST},
    {"NVML_ERROR_RESET_REQUIRED", NVML_ERROR_RESET_REQUIRED},
    {"NVML_ERROR_OPERATING_SYSTEM", NVML_ERROR_OPERATING_SYSTEM},
    {"NVML_ERROR_LIB_RM_VERSION_MISMATCH", NVML_ERROR_LIB_RM_VERSION_MISMATCH},
    {"NVML_ERROR_IN_USE", NVML_ERROR_IN_USE},
    {"NVML_ERROR_MEMORY", NVML_ERROR_MEMORY},
    {"NVML_ERROR_NO_DATA", NVML_ERROR_NO_DATA},
    {"NVML_ERROR_UNKNOWN", NVML_ERROR_UNKNOWN},
};

static nvmlReturn_t code_of(const char *name) {
    if (!name) return NVML_SUCCESS;
    for (size_t i = 0; i < sizeof ERRORS / sizeof *ERRORS; i++)
        if (!strcmp(ERRORS[i].name, name)) return ERRORS[i].code;
    return NVML_ERROR_UNKNOWN;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    for (size_t i = 0; i < sizeof ERRORS / sizeof *ERRORS; i++)
        if (ERRORS[i].code == result) return ERRORS[i].name;
    return "NVML_ERROR_UNKNOWN";
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

static nvmlReturn_t load(void) {
    unload();
    const char *path = getenv("FAKE_NVML_PROFILE");
    if (!path || !*path) return NVML_ERROR_DRIVER_NOT_LOADED; /* no simulated GPU named */
    char *text = read_file(path);
    if (!text) return NVML_ERROR_DRIVER_NOT_LOADED;
    jparser p = {text, 1};
    g_profile = j_value(&p);
    free(text);
    if (!p.ok || !g_profile || g_profile->type != J_OBJ) {
        fprintf(stderr, "fakenvml: %s: not a valid JSON object\n", path);
        unload();
        return NVML_ERROR_UNKNOWN;
    }
    nvmlReturn_t init_error = code_of(j_str(g_profile, "init_error", NULL));
    if (init_error != NVML_SUCCESS) return init_error;
    const jval *gpus = j_get(g_profile, "gpus");
    for (int i = 0; gpus && gpus->type == J_ARR && i < gpus->n && i < MAX_GPUS; i++) {
        gpu_t *g = &g_gpus[i];
        g->json = gpus->items[i];
        g->handle.gpu = i;
        g->handle.mig = -1;
        const jval *migs = j_get(g->json, "mig_devices");
        for (int m = 0; migs && migs->type == J_ARR && m < migs->n && m < MAX_MIG; m++) {
            g->mig_handles[m].gpu = i;
            g->mig_handles[m].mig = m;
            g->n_mig = m + 1;
        }
        g_ngpus = i + 1;
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    nvmlReturn_t r = load();
    g_initialized = r == NVML_SUCCESS;
    return r;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (!g_initialized) return NVML_ERROR_UNINITIALIZED;
    g_initialized = 0;
    return NVML_SUCCESS;
}

static nvmlReturn_t put_str(char *buf, unsigned int len, const char *value) {
    if (!g_initialized) return NVML_ERROR_UNINITIALIZED;
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    if (!value) return NVML_ERROR_NOT_SUPPORTED;
    if (strlen(value) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(buf, value);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    return put_str(version, length, g_profile ? j_str(g_profile, "driver_version", NULL) : NULL);
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    return put_str(version, length, g_profile ? j_str(g_profile, "nvml_version", NULL) : NULL);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion) {
    if (!g_initialized) return NVML_ERROR_UNINITIALIZED;
    long long v = j_int(g_profile, "cuda_driver_version", -1);
    if (v < 0) return NVML_ERROR_NOT_SUPPORTED;
    *cudaDriverVersion = (int)v;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion) {
    return nvmlSystemGetCudaDriverVersion(cudaDriverVersion);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    if (!g_initialized) return NVML_ERROR_UNINITIALIZED;
    *deviceCount = (unsigned)g_ngpus;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!g_initialized) return NVML_ERROR_UNINITIALIZED;
    if ((int)index >= g_ngpus) return NVML_ERROR_INVALID_ARGUMENT;
    /* A lost GPU still has a handle on real systems; its queries then fail. */
    *device = &g_gpus[index].handle;
    return NVML_SUCCESS;
}

/* The JSON of a handle (GPU or MIG device) after the per-GPU error check. */
static nvmlReturn_t lookup(nvmlDevice_t d, const jval **out) {
    if (!g_initialized) return NVML_ERROR_UNINITIALIZED;
    if (!d || d->gpu < 0 || d->gpu >= g_ngpus) return NVML_ERROR_INVALID_ARGUMENT;
    const gpu_t *g = &g_gpus[d->gpu];
    nvmlReturn_t err = code_of(j_str(g->json, "error", NULL));
    if (err != NVML_SUCCESS) return err;
    if (d->mig < 0) {
        *out = g->json;
    } else {
        const jval *migs = j_get(g->json, "mig_devices");
        if (!migs || d->mig >= migs->n) return NVML_ERROR_INVALID_ARGUMENT;
        *out = migs->items[d->mig];
    }
    return NVML_SUCCESS;
}

#define LOOKUP(d, j)                              \
    const jval *j = NULL;                         \
    do {                                          \
        nvmlReturn_t _r = lookup((d), &j);        \
        if (_r != NVML_SUCCESS) return _r;        \
    } while (0)

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    LOOKUP(device, j);
    return put_str(name, length, j_str(j, "name", NULL));
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    LOOKUP(device, j);
    return put_str(uuid, length, j_str(j, "uuid", NULL));
}

nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber) {
    LOOKUP(device, j);
    long long v = j_int(j, "minor_number", device->gpu);
    *minorNumber = (unsigned)v;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    LOOKUP(device, j);
    if (device->mig >= 0) return NVML_ERROR_NOT_SUPPORTED;
    memset(pci, 0, sizeof *pci);
    const char *bus = j_str(j, "pci_bus_id", "00000000:00:00.0");
    unsigned dom = 0, b = 0, dev = 0, fn = 0;
    sscanf(bus, "%x:%x:%x.%x", &dom, &b, &dev, &fn);
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

static unsigned long long mem_mib(const jval *j) {
    return (unsigned long long)j_int(j, "memory_total_mib", 0);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    LOOKUP(device, j);
    unsigned long long total = mem_mib(j) * 1024ULL * 1024ULL;
    memory->total = total;
    memory->used = (unsigned long long)j_int(j, "memory_used_mib", 0) * 1024ULL * 1024ULL;
    memory->free = total - memory->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    LOOKUP(device, j);
    unsigned long long total = mem_mib(j) * 1024ULL * 1024ULL;
    memory->total = total;
    memory->reserved = 0;
    memory->used = (unsigned long long)j_int(j, "memory_used_mib", 0) * 1024ULL * 1024ULL;
    memory->free = total - memory->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    LOOKUP(device, j);
    const char *cc = j_str(j, "compute_capability", NULL);
    if (!cc || sscanf(cc, "%d.%d", major, minor) != 2) return NVML_ERROR_NOT_SUPPORTED;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device, nvmlDeviceArchitecture_t *arch) {
    LOOKUP(device, j);
    static const struct { const char *name; unsigned v; } ARCH[] = {
        {"kepler", NVML_DEVICE_ARCH_KEPLER}, {"maxwell", NVML_DEVICE_ARCH_MAXWELL},
        {"pascal", NVML_DEVICE_ARCH_PASCAL}, {"volta", NVML_DEVICE_ARCH_VOLTA},
        {"turing", NVML_DEVICE_ARCH_TURING}, {"ampere", NVML_DEVICE_ARCH_AMPERE},
        {"ada-lovelace", NVML_DEVICE_ARCH_ADA}, {"hopper", NVML_DEVICE_ARCH_HOPPER},
        {"blackwell", NVML_DEVICE_ARCH_BLACKWELL},
    };
    const char *name = j_str(j, "architecture", NULL);
    *arch = NVML_DEVICE_ARCH_UNKNOWN;
    for (size_t i = 0; name && i < sizeof ARCH / sizeof *ARCH; i++)
        if (!strcmp(ARCH[i].name, name)) *arch = ARCH[i].v;
    return NVML_SUCCESS;
}

static unsigned mig_mode(const char *s) {
    return s && !strcmp(s, "enabled") ? NVML_DEVICE_MIG_ENABLE : NVML_DEVICE_MIG_DISABLE;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode,
                                  unsigned int *pendingMode) {
    LOOKUP(device, j);
    const jval *mode = j_get(j, "mig_mode");
    if (device->mig >= 0 || !mode) return NVML_ERROR_NOT_SUPPORTED;
    *currentMode = mig_mode(j_str(mode, "current", NULL));
    *pendingMode = mig_mode(j_str(mode, "pending", NULL));
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    LOOKUP(device, j);
    if (device->mig >= 0 || !j_get(j, "mig_mode")) return NVML_ERROR_NOT_SUPPORTED;
    /* A100/H100 have 7 MIG slots; report at least as many as the profile lists. */
    int n = g_gpus[device->gpu].n_mig;
    *count = (unsigned)(n > 7 ? n : 7);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *migDevice) {
    LOOKUP(device, j);
    const jval *mode = j_get(j, "mig_mode");
    if (device->mig >= 0 || !mode) return NVML_ERROR_NOT_SUPPORTED;
    if (mig_mode(j_str(mode, "current", NULL)) != NVML_DEVICE_MIG_ENABLE)
        return NVML_ERROR_NOT_FOUND;
    gpu_t *g = &g_gpus[device->gpu];
    if ((int)index >= g->n_mig) return NVML_ERROR_NOT_FOUND;
    *migDevice = &g->mig_handles[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice) {
    LOOKUP(device, j);
    (void)j;
    *isMigDevice = device->mig >= 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) {
    LOOKUP(device, j);
    if (device->mig < 0) return NVML_ERROR_INVALID_ARGUMENT;
    *id = (unsigned)j_int(j, "gpu_instance_id", 0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id) {
    LOOKUP(device, j);
    if (device->mig < 0) return NVML_ERROR_INVALID_ARGUMENT;
    *id = (unsigned)j_int(j, "compute_instance_id", 0);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetAttributes_v2(nvmlDevice_t device, nvmlDeviceAttributes_t *attributes) {
    LOOKUP(device, j);
    memset(attributes, 0, sizeof *attributes);
    attributes->multiprocessorCount = (unsigned)j_int(j, "multiprocessor_count", 0);
    attributes->gpuInstanceSliceCount = (unsigned)j_int(j, "gpu_instance_slices", 0);
    attributes->computeInstanceSliceCount = (unsigned)j_int(j, "compute_instance_slices", 0);
    attributes->memorySizeMB = mem_mib(j);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit) {
    LOOKUP(device, j);
    long long mw = j_int(j, "power_limit_mw", -1);
    if (device->mig >= 0 || mw < 0) return NVML_ERROR_NOT_SUPPORTED;
    *limit = (unsigned)mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit) {
    return nvmlDeviceGetPowerManagementLimit(device, limit);
}

/* ------------------------------------------------------------------ XID events */

struct nvmlEventSet_st {
    struct timespec created;
    unsigned long long registered[MAX_GPUS]; /* event type mask per GPU */
    int delivered[MAX_XID];                  /* profile xid_events already delivered */
    long events_offset;                      /* how much of $FAKE_NVML_EVENTS was read */
};

static double since_ms(const struct timespec *t0) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) * 1e3 + (double)(now.tv_nsec - t0->tv_nsec) / 1e6;
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    if (!g_initialized) return NVML_ERROR_UNINITIALIZED;
    struct nvmlEventSet_st *s = calloc(1, sizeof *s);
    clock_gettime(CLOCK_MONOTONIC, &s->created);
    /* Only events appended after the set exists are delivered, as with a real driver. */
    const char *path = getenv("FAKE_NVML_EVENTS");
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (f) {
        fseek(f, 0, SEEK_END);
        s->events_offset = ftell(f);
        fclose(f);
    }
    *set = s;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    free(set);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types) {
    LOOKUP(device, j);
    (void)j;
    *types = nvmlEventTypeXidCriticalError | nvmlEventTypeSingleBitEccError |
             nvmlEventTypeDoubleBitEccError;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
                                      nvmlEventSet_t set) {
    LOOKUP(device, j);
    (void)j;
    if (!set || device->mig >= 0) return NVML_ERROR_INVALID_ARGUMENT;
    set->registered[device->gpu] |= types;
    return NVML_SUCCESS;
}

static int fill(nvmlEventSet_t set, int gpu, long long xid, nvmlEventData_t *data) {
    if (gpu < 0 || gpu >= g_ngpus) return 0;
    if (!(set->registered[gpu] & nvmlEventTypeXidCriticalError)) return 0;
    memset(data, 0, sizeof *data);
    data->device = &g_gpus[gpu].handle;
    data->eventType = nvmlEventTypeXidCriticalError;
    data->eventData = (unsigned long long)xid;
    data->gpuInstanceId = 0xFFFFFFFF;
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
        if (fill(set, (int)j_int(e, "gpu", -1), j_int(e, "xid", 999), data)) return 1;
    }
    const char *path = getenv("FAKE_NVML_EVENTS");
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) return 0;
    int found = 0;
    if (fseek(f, set->events_offset, SEEK_SET) == 0) {
        char line[128];
        while (!found && fgets(line, sizeof line, f)) {
            if (!strchr(line, '\n')) break; /* a line still being written: read it next time */
            set->events_offset = ftell(f);
            int gpu;
            long long xid;
            if (sscanf(line, "%d %lld", &gpu, &xid) == 2) found = fill(set, gpu, xid, data);
        }
    }
    fclose(f);
    return found;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                 unsigned int timeoutms) {
    if (!g_initialized) return NVML_ERROR_UNINITIALIZED;
    if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (next_event(set, data)) return NVML_SUCCESS;
        if (since_ms(&start) >= timeoutms) return NVML_ERROR_TIMEOUT;
        usleep(10 * 1000); /* poll in 10 ms steps: no busy loop */
    }
}
