/* Errors travel as return codes with a message that names the file, key,
 * tensor or value at fault. Library code never exits; programs print
 * err.msg as one line and return non-zero. */
#ifndef DVL_ERR_H
#define DVL_ERR_H

#include <stdarg.h>

enum {
    DVL_OK = 0,
    DVL_EINVAL = 1, /* bad argument, shape or value */
    DVL_EIO = 2,    /* file missing, unreadable, truncated, corrupt */
    DVL_ENOMEM = 3,
    DVL_EUNSUP = 4, /* valid input that dvl does not support */
    DVL_EDEVICE = 5 /* device (CUDA) missing or failed */
};

typedef struct dvl_err {
    int code;
    char msg[512];
} dvl_err;

/* Set err (if not NULL) and return code, so callers can write
 * `return dvl_errf(err, DVL_EIO, "%s: truncated", path);`. */
int dvl_errf(dvl_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int dvl_verrf(dvl_err *err, int code, const char *fmt, va_list ap);
/* Put "PREFIX: " (formatted) before err's message, for a caller that knows
 * where the failing call's input came from; returns err's code (DVL_EINVAL
 * when err is NULL). */
int dvl_err_prefix(dvl_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
