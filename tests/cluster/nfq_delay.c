/*
 * nfq_delay QUEUE DELAY_US: hold every packet that netfilter sends to NFQUEUE number QUEUE back
 * by DELAY_US microseconds, then let it go, in arrival order. The fault tests' stand-in for
 * `tc qdisc add ... netem delay`, which this kernel lacks (CONFIG_NET_SCH_NETEM is not set).
 *
 * Owns only the queue it binds; must never drop or reorder a packet (a full hold ring lets a
 * packet through at once instead, and the queue is opened fail-open for the same reason).
 *
 * Build: gcc -O2 -o nfq_delay nfq_delay.c -lnetfilter_queue
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>

/* Packets held at once: at 0.5 ms and 200k packets/s that is 100 in flight; 64k is ample. */
#define HELD_MAX 65536u
#define RECV_BUFFER_BYTES 65536

struct held {
    uint32_t id;
    uint64_t due_ns;
};

static struct held ring[HELD_MAX];
static uint32_t ring_head, ring_len;
static uint64_t delay_ns;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int on_packet(struct nfq_q_handle *queue, struct nfgenmsg *msg, struct nfq_data *data, void *unused) {
    (void)msg;
    (void)unused;
    struct nfqnl_msg_packet_hdr *header = nfq_get_msg_packet_hdr(data);
    uint32_t id = ntohl(header->packet_id);
    if (ring_len == HELD_MAX)
        return nfq_set_verdict(queue, id, NF_ACCEPT, 0, NULL);
    ring[(ring_head + ring_len) % HELD_MAX] = (struct held){id, now_ns() + delay_ns};
    ring_len++;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s QUEUE DELAY_US\n", argv[0]);
        return 2;
    }
    uint16_t queue_num = (uint16_t)atoi(argv[1]);
    delay_ns = (uint64_t)atoll(argv[2]) * 1000u;
    /* The default 50 us timer slack would be a tenth of a 0.5 ms delay. */
    prctl(PR_SET_TIMERSLACK, 1UL);

    struct nfq_handle *handle = nfq_open();
    if (!handle) {
        perror("nfq_open");
        return 1;
    }
    struct nfq_q_handle *queue = nfq_create_queue(handle, queue_num, &on_packet, NULL);
    if (!queue) {
        perror("nfq_create_queue");
        return 1;
    }
    nfq_set_mode(queue, NFQNL_COPY_META, 0);
    nfq_set_queue_maxlen(queue, HELD_MAX);
    nfq_set_queue_flags(queue, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN);
    int fd = nfq_fd(handle);
    static char buffer[RECV_BUFFER_BYTES];

    for (;;) {
        uint64_t now = now_ns();
        while (ring_len && ring[ring_head].due_ns <= now) {
            nfq_set_verdict(queue, ring[ring_head].id, NF_ACCEPT, 0, NULL);
            ring_head = (ring_head + 1) % HELD_MAX;
            ring_len--;
        }
        struct timespec wait = {1, 0};
        if (ring_len) {
            uint64_t left = ring[ring_head].due_ns - now;
            wait = (struct timespec){(time_t)(left / 1000000000u), (long)(left % 1000000000u)};
        }
        struct pollfd pfd = {fd, POLLIN, 0};
        if (ppoll(&pfd, 1, &wait, NULL) > 0) {
            for (;;) {
                ssize_t got = recv(fd, buffer, sizeof buffer, MSG_DONTWAIT);
                if (got < 0) {
                    if (errno == EAGAIN || errno == ENOBUFS || errno == EINTR)
                        break;
                    perror("recv");
                    return 1;
                }
                nfq_handle_packet(handle, buffer, (int)got);
            }
        }
    }
}
