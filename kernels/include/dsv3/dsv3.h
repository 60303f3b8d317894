// Umbrella header of the dsv3 portability layer. Kernel sources include only this.
#pragma once
#include "platform.h"
#include "types.h"
#include "warp.h"
#include "memory.h"
#include "sm90.h"
#include "mfma.h"
