/* The floor for the agent's idle CPU: the least a program can do that looks
 * at every exec on the machine as the agent must. It subscribes to the
 * kernel's process connector with the same event mask and the same filter
 * (execs only), blocks in recv(2), and for each exec does the agent's reads:
 * a stat of /proc/PID/exe and, if the process still runs, that link, its
 * comm and its whole cmdline. No allocation, no poll, no second descriptor.
 * The agent bench runs it beside the agent under the same exec load and
 * prints the agent's CPU against it. Runs until killed. */
#include <fcntl.h>
#include <linux/cn_proc.h>
#include <linux/connector.h>
#include <linux/filter.h>
#include <linux/netlink.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>

#define EVENT_OFFSET (NLMSG_HDRLEN + sizeof(struct cn_msg))

static void read_all(const char *path) {
    char buf[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    while (read(fd, buf, sizeof buf) > 0)
        ;
    close(fd);
}

int main(void) {
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_CONNECTOR);
    if (fd < 0) {
        perror("exec_floor: socket");
        return 1;
    }
    int size = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    struct sockaddr_nl addr = {.nl_family = AF_NETLINK, .nl_groups = CN_IDX_PROC};
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("exec_floor: bind");
        return 1;
    }
    /* Execs only, checked by the kernel before the message is queued. */
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, EVENT_OFFSET),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, htonl(PROC_EVENT_EXEC), 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0xffffffff),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog prog = {.len = sizeof code / sizeof code[0], .filter = code};
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0) {
        perror("exec_floor: filter");
        return 1;
    }
    /* LISTEN, then the events wanted (Linux 6.6+; older kernels ignore it). */
    char msg[EVENT_OFFSET + 8] = {0};
    struct nlmsghdr *nl = (struct nlmsghdr *)msg;
    struct cn_msg *cn = (struct cn_msg *)(msg + NLMSG_HDRLEN);
    nl->nlmsg_len = sizeof msg;
    nl->nlmsg_type = NLMSG_DONE;
    cn->id.idx = CN_IDX_PROC;
    cn->id.val = CN_VAL_PROC;
    cn->len = 8;
    unsigned int op[2] = {PROC_CN_MCAST_LISTEN, PROC_EVENT_EXEC | PROC_EVENT_EXIT};
    memcpy(msg + EVENT_OFFSET, op, sizeof op);
    if (send(fd, msg, sizeof msg, 0) < 0) {
        perror("exec_floor: listen");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    char buf[8192];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < (ssize_t)(EVENT_OFFSET + 24))
            continue;
        struct proc_event *ev = (struct proc_event *)(buf + EVENT_OFFSET);
        if (ev->what != PROC_EVENT_EXEC)
            continue;
        int pid = ev->event_data.exec.process_tgid;
        char path[64], link[4096];
        struct stat st;
        snprintf(path, sizeof path, "/proc/%d/exe", pid);
        if (stat(path, &st) < 0)
            continue;
        if (readlink(path, link, sizeof link) < 0)
            continue;
        snprintf(path, sizeof path, "/proc/%d/comm", pid);
        read_all(path);
        snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
        read_all(path);
    }
}
