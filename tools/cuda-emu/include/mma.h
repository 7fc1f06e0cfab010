// <mma.h> (nvcuda::wmma) for the emulated backend.
#pragma once
#include "emu_wmma.h"
