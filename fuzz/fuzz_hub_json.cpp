// SPDX-License-Identifier: Apache-2.0
// Fuzzes what gptqd reads from a Hub server and keeps of a download: the input is the body of a
// repo-info reply, optionally followed by a NUL byte and a stored DownloadState JSON, and another
// NUL and a repo reference ("org/name@rev"). Checks, beyond "no crash and only clean errors":
// an accepted reply has a 40-hex commit, only names check_repo_file_name accepts, each name once,
// no name that is another's directory, and lowercase hex ids; DownloadState::from_json never
// throws and round-trips; an accepted reference parses back from its display().
#include <set>

#include "daemon/hub_client.h"
#include "fuzz/fuzz_common.h"

using namespace gptqd;
using namespace gptqd::daemon;

namespace {

[[noreturn]] void broken(const std::string& what) {
  std::fprintf(stderr, "%s\n", what.c_str());
  std::abort();
}

bool lower_hex(const std::string& s, size_t len) {
  return is_hex(s, len) && s.find_first_of("ABCDEF") == std::string::npos;
}

void check_info(const HubRepoInfo& info) {
  if (!lower_hex(info.sha, 40)) broken("accepted a reply whose commit is " + info.sha);
  std::set<std::string> names;
  for (const HubFile& f : info.files) {
    check_repo_file_name(f.path);  // throws (a clean rejection would be a bug here): caught below
    if (!names.insert(f.path).second) broken("accepted a reply that lists " + f.path + " twice");
    if (!f.blob_id.empty() && !lower_hex(f.blob_id, 40)) broken("accepted blob id " + f.blob_id);
    if (!f.lfs_sha256.empty() && !lower_hex(f.lfs_sha256, 64)) broken("accepted LFS sha256 " + f.lfs_sha256);
  }
  for (const std::string& n : names) {
    for (size_t slash = n.find('/'); slash != std::string::npos; slash = n.find('/', slash + 1)) {
      if (names.count(n.substr(0, slash)) != 0) broken("accepted " + n.substr(0, slash) + " as a file and a directory");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view all = fuzz::to_text(data, size);
  const size_t nul1 = all.find('\0');
  const std::string_view body = all.substr(0, nul1);
  const std::string_view rest = nul1 == std::string_view::npos ? std::string_view() : all.substr(nul1 + 1);
  const size_t nul2 = rest.find('\0');
  const std::string_view state_text = rest.substr(0, nul2);
  const std::string_view ref_text = nul2 == std::string_view::npos ? std::string_view("org/name") : rest.substr(nul2 + 1);

  HubRepoRef ref;
  ref.repo_id = "org/name";
  fuzz::expect_clean([&] {
    ref = HubRepoRef::parse(ref_text);
    const HubRepoRef back = HubRepoRef::parse(ref.display());
    if (back.kind != ref.kind || back.repo_id != ref.repo_id || back.revision != ref.revision) {
      broken("repo ref " + std::string(ref_text) + " does not parse back from " + ref.display());
    }
  });
  fuzz::expect_clean([&] {
    const HubRepoInfo info = parse_repo_info(body, ref);
    try {
      check_info(info);
    } catch (const Error& e) {
      broken(std::string("accepted a reply with a name check_repo_file_name refuses: ") + e.what());
    }
  });

  const DownloadState st = DownloadState::from_json(state_text);  // never throws: bad means start over
  if (st.done.size() > kMaxDownloadRanges) broken("a stored state with more than 64 ranges");
  const DownloadState again = DownloadState::from_json(st.to_json());
  if (again.done != st.done) broken("DownloadState changed in a to_json/from_json round trip: " + st.to_json());
  return 0;
}
