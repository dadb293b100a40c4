/* netcheck: the test image of tests/e2e/test_cluster_network_policy.py, compiled with gcc -static.
 *
 *   netcheck serve PORT...          listen on every PORT; each connection gets "open PORT\n"
 *   netcheck connect IP PORT MS     one TCP connect, bounded by MS ms; prints what happened:
 *                                   "open PORT" (the banner), "refused", "timeout" or "error ..."
 *
 * Why C and not the http-echo test image: a one-file static binary is the whole image (no
 * interpreter in it), and the prober runs inside a pod (kubectl exec), so the connection starts
 * in the pod's network namespace like an attacker's would. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_PORTS 8

static int serve(int argc, char **argv) {
    struct pollfd fds[MAX_PORTS];
    int ports[MAX_PORTS], n = 0;
    for (int i = 0; i < argc && n < MAX_PORTS; i++, n++) {
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
        int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
        ports[n] = atoi(argv[i]);
        addr.sin_port = htons((unsigned short)ports[n]);
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) || listen(fd, 16)) {
            perror("listen");
            return 2;
        }
        fds[n].fd = fd;
        fds[n].events = POLLIN;
    }
    printf("serving %d ports\n", n);
    fflush(stdout);
    for (;;) {
        if (poll(fds, (nfds_t)n, -1) < 0 && errno != EINTR) return 2;
        for (int i = 0; i < n; i++) {
            if (!(fds[i].revents & POLLIN)) continue;
            int c = accept(fds[i].fd, NULL, NULL);
            if (c < 0) continue;
            char banner[32];
            int len = snprintf(banner, sizeof banner, "open %d\n", ports[i]);
            (void)!write(c, banner, (size_t)len);
            close(c);
        }
    }
}

static int connect_once(const char *ip, int port, int ms) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, ip, &addr.sin_addr) != 1) {
        printf("error bad address %s\n", ip);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) && errno != EINPROGRESS) {
        printf(errno == ECONNREFUSED ? "refused\n" : "error %s\n", strerror(errno));
        return 1;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    if (poll(&p, 1, ms) == 0) {
        printf("timeout\n");
        return 1;
    }
    int err = 0;
    socklen_t elen = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
    if (err) {
        printf(err == ECONNREFUSED ? "refused\n" : "error %s\n", strerror(err));
        return 1;
    }
    fcntl(fd, F_SETFL, 0);
    char buf[32] = {0};
    struct pollfd r = {.fd = fd, .events = POLLIN};
    if (poll(&r, 1, ms) <= 0 || read(fd, buf, sizeof buf - 1) <= 0) {
        printf("error connected but no banner\n");
        return 1;
    }
    fputs(buf, stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "serve") == 0) return serve(argc - 2, argv + 2);
    if (argc == 5 && strcmp(argv[1], "connect") == 0)
        return connect_once(argv[2], atoi(argv[3]), atoi(argv[4]));
    fprintf(stderr, "usage: netcheck serve PORT... | netcheck connect IP PORT MS\n");
    return 2;
}
