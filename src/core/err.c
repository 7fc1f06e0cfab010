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
