// SPDX-License-Identifier: Apache-2.0
// Fault-injection points for crash-consistency tests (daemon layer). GPTQD_FAULT_POINT=<name>
// in the daemon's environment makes it SIGKILL itself when it reaches that point — the same
// as a kill -9 at exactly that instant. Without the variable a point costs one getenv.
#pragma once

#include <filesystem>
#include <string_view>

namespace gptqd::daemon {

// Names in use: "import.after_stage" (files copied to tmp/), "import.after_blobs" (blobs renamed
// into blobs/, registry not yet committed), "quantize.after_layer.N" (layer N of a quantize job
// recorded in the registry).
void fault_point(std::string_view name);

// GPTQD_FAULT_DISK_FULL=<name>: throws Error(no_space) at that point, as a full disk would.
// Names in use: "quantize.checkpoint" (after the checkpoint's files were written).
void fault_disk_full(std::string_view name);

// GPTQD_FAULT_DEVICE=<name>: throws DeviceFault at that point, as a sticky CUDA error would.
// Names in use: "device.step" (a generation step on the device worker).
void fault_device(std::string_view name);

// GPTQD_FAULT_DEVICE_HANG=<name>: the device step never returns (as a wedged driver call would):
// the thread sleeps until the process ends. Names in use: "device.step".
void fault_device_hang(std::string_view name);

// GPTQD_FAULT_EIO=<name>: the first fsync at that point (once per process, so the next attempt
// works) fails with EIO, as a disk that could not write the cached pages would.
// fault_fsync: ::fsync(fd), or -1 with errno EIO when armed. Names in use: "hub.fsync" (a Hub
// download's checkpoint of its partial).
int fault_fsync(std::string_view name, int fd);
// fault_eio: throws Error(io) naming `file`, as a failed fsync of it would. Names in use:
// "quantize.checkpoint" (after the checkpoint's files were written), "registry.add" (the COMMIT
// that registers a new tag: it rolls back).
void fault_eio(std::string_view name, const std::filesystem::path& file);

}  // namespace gptqd::daemon
