/* A process whose main thread ends while another thread runs on: the way a
 * product (or a library preloaded into one) can leave /proc/PID without an
 * exe, a command line or memory. With the argument "wait", the main thread
 * first waits for one byte on stdin, so a test can let the process be seen
 * before it ends its main thread; with "spin", the other thread keeps a core
 * busy. The other thread runs until the process is killed, or five minutes at
 * most, so a failed test leaves nothing behind. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void *run_on(void *arg) {
    if (arg != NULL) {
        time_t end = time(NULL) + 300;
        volatile unsigned long n = 0;
        while (time(NULL) < end)
            n++;
    } else {
        sleep(300);
    }
    exit(0);
}

int main(int argc, char **argv) {
    pthread_t t;
    int spin = argc > 1 && strcmp(argv[1], "spin") == 0;
    if (pthread_create(&t, NULL, run_on, spin ? &t : NULL) != 0)
        return 1;
    if (argc > 1 && strcmp(argv[1], "wait") == 0) {
        char c;
        if (read(0, &c, 1) < 0)
            return 1;
    }
    pthread_exit(NULL);
}
