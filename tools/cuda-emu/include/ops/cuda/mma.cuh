// src/ops/cuda/mma.cuh for the emulated backend: its CPU twin.
#pragma once
#include "emu_mma.h"
