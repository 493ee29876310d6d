// Declarations only: the Gloo names that libtorch's ProcessGroupGloo.hpp mentions, so that the
// distributed shim compiles against the torch headers of the venv (whose wheel ships no Gloo
// headers). The shim holds Gloo objects only behind smart pointers made and used inside
// libtorch, never by value, so nothing here describes a layout that code in the shim relies
// on; `dist_shim.cpp` checks the one size that matters (ProcessGroupGloo) at compile time.
#pragma once
#include "gloo/decl.h"
