/* Load generator for scripts/bench: N client threads, each doing connect, one request line, read the reply
 * line, close, in a loop (or once each, all released together), against a Unix socket.
 *
 *   loadgen SOCKET REQUEST_FILE CONCURRENCY SECONDS [once] [pause_us=N] [records=FILE] [expect=TEXT] [cpu=N]
 *
 * SECONDS is the run length (ignored with "once"); pause_us makes each client wait between requests;
 * cpu=N runs the generator on that CPU only (the bench keeps the server on another). A reply counts as ok
 * when it ends with a newline and contains TEXT (default "\"ok\":true"). Prints one JSON object on stdout:
 * requests, ok, errors, elapsed, p50_us, p99_us, max_us. With records=FILE, every request is written there
 * as one line "start_ns latency_ns expires_on ok", start in CLOCK_REALTIME (comparable with Python's time.time()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define REPLY_MAX (1 << 20)

typedef struct {
    int64_t start_ns;   /* CLOCK_REALTIME */
    int64_t latency_ns;
    int64_t expires_on;
    int ok;
} record_t;

typedef struct {
    record_t *items;
    size_t len, cap;
    long errors;
} thread_state_t;

static struct sockaddr_un address;
static char *request;
static size_t request_len;
static const char *expect = "\"ok\":true";
static int once;
static long pause_us;
static int64_t deadline_ns;
static pthread_barrier_t barrier;

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void push(thread_state_t *state, record_t record) {
    if (state->len == state->cap) {
        state->cap = state->cap ? state->cap * 2 : 4096;
        state->items = realloc(state->items, state->cap * sizeof(record_t));
        if (!state->items) { perror("realloc"); exit(2); }
    }
    state->items[state->len++] = record;
}

/* One request; returns 1 when the reply was ok, and fills *expires_on when the reply carries it. */
static int one_request(char *reply, int64_t *expires_on) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    int ok = 0;
    size_t got = 0;
    if (connect(fd, (struct sockaddr *)&address, sizeof(address)) == 0) {
        size_t sent = 0;
        while (sent < request_len) {
            ssize_t n = write(fd, request + sent, request_len - sent);
            if (n <= 0) break;
            sent += (size_t)n;
        }
        while (sent == request_len && got < REPLY_MAX - 1) {
            ssize_t n = read(fd, reply + got, REPLY_MAX - 1 - got);
            if (n <= 0) break;
            got += (size_t)n;
            if (memchr(reply + got - n, '\n', (size_t)n)) break;
        }
    }
    close(fd);
    reply[got] = '\0';
    if (got && reply[got - 1] == '\n' && strstr(reply, expect)) ok = 1;
    char *field = strstr(reply, "\"expires_on\":");
    *expires_on = field ? strtoll(field + 13, NULL, 10) : 0;
    return ok;
}

static void *client(void *arg) {
    thread_state_t *state = arg;
    char *reply = malloc(REPLY_MAX);
    if (!reply) { perror("malloc"); exit(2); }
    pthread_barrier_wait(&barrier);
    do {
        record_t record = {0};
        record.start_ns = now_ns(CLOCK_REALTIME);
        int64_t begin = now_ns(CLOCK_MONOTONIC);
        record.ok = one_request(reply, &record.expires_on);
        record.latency_ns = now_ns(CLOCK_MONOTONIC) - begin;
        if (!record.ok) state->errors++;
        push(state, record);
        if (pause_us > 0) usleep((useconds_t)pause_us);
    } while (!once && now_ns(CLOCK_MONOTONIC) < deadline_ns);
    free(reply);
    return NULL;
}

static int compare(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    char *data = malloc(65536);
    *len = fread(data, 1, 65536, f);
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s SOCKET REQUEST_FILE CONCURRENCY SECONDS [once] [pause_us=N] "
                        "[records=FILE] [expect=TEXT] [cpu=N]\n", argv[0]);
        return 2;
    }
    const char *records_path = NULL;
    for (int i = 5; i < argc; i++) {
        if (!strcmp(argv[i], "once")) once = 1;
        else if (!strncmp(argv[i], "pause_us=", 9)) pause_us = atol(argv[i] + 9);
        else if (!strncmp(argv[i], "records=", 8)) records_path = argv[i] + 8;
        else if (!strncmp(argv[i], "expect=", 7)) expect = argv[i] + 7;
        else if (!strncmp(argv[i], "cpu=", 4)) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(atoi(argv[i] + 4), &set);
            if (sched_setaffinity(0, sizeof(set), &set)) { perror("sched_setaffinity"); return 2; }
        }
        else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
    }
    address.sun_family = AF_UNIX;
    if (strlen(argv[1]) >= sizeof(address.sun_path)) { fprintf(stderr, "socket path too long\n"); return 2; }
    strcpy(address.sun_path, argv[1]);
    request = read_file(argv[2], &request_len);
    int concurrency = atoi(argv[3]);
    double seconds = atof(argv[4]);
    if (concurrency < 1) { fprintf(stderr, "CONCURRENCY must be at least 1\n"); return 2; }

    thread_state_t *states = calloc((size_t)concurrency, sizeof(thread_state_t));
    pthread_t *threads = calloc((size_t)concurrency, sizeof(pthread_t));
    pthread_barrier_init(&barrier, NULL, (unsigned)concurrency + 1);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (int i = 0; i < concurrency; i++) {
        if (pthread_create(&threads[i], &attr, client, &states[i])) { perror("pthread_create"); return 2; }
    }
    int64_t begin = now_ns(CLOCK_MONOTONIC);
    deadline_ns = begin + (int64_t)(seconds * 1e9);
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < concurrency; i++) pthread_join(threads[i], NULL);
    double elapsed = (double)(now_ns(CLOCK_MONOTONIC) - begin) / 1e9;

    size_t total = 0;
    long errors = 0;
    for (int i = 0; i < concurrency; i++) { total += states[i].len; errors += states[i].errors; }
    int64_t *latencies = malloc((total ? total : 1) * sizeof(int64_t));
    size_t k = 0;
    FILE *records = records_path ? fopen(records_path, "w") : NULL;
    if (records_path && !records) { perror(records_path); return 2; }
    for (int i = 0; i < concurrency; i++) {
        for (size_t j = 0; j < states[i].len; j++) {
            record_t *r = &states[i].items[j];
            latencies[k++] = r->latency_ns;
            if (records)
                fprintf(records, "%lld %lld %lld %d\n", (long long)r->start_ns, (long long)r->latency_ns,
                        (long long)r->expires_on, r->ok);
        }
    }
    if (records) fclose(records);
    qsort(latencies, total, sizeof(int64_t), compare);
    double p50 = total ? latencies[(total - 1) / 2] / 1e3 : 0;
    double p99 = total ? latencies[(size_t)((double)(total - 1) * 0.99)] / 1e3 : 0;
    double max = total ? latencies[total - 1] / 1e3 : 0;
    printf("{\"requests\": %zu, \"ok\": %zu, \"errors\": %ld, \"elapsed\": %.6f, "
           "\"p50_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f}\n",
           total, total - (size_t)errors, errors, elapsed, p50, p99, max);
    return 0;
}
