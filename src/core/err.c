#include "core/err.h"

#include <stdio.h>

int dvl_verrf(dvl_err *err, int code, const char *fmt, va_list ap)
{
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    }
    return code;
}

int dvl_errf(dvl_err *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    dvl_verrf(err, code, fmt, ap);
    va_end(ap);
    return code;
}

int dvl_err_prefix(dvl_err *err, const char *fmt, ...)
{
    if (!err)
        return DVL_EINVAL;
    char pre[sizeof err->msg], msg[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof msg, "%s", err->msg);
    return dvl_errf(err, err->code, "%s: %s", pre, msg);
}
