// SPDX-License-Identifier: Apache-2.0
// Fuzzes the JSON request bodies as the handlers read them: byte 0 picks the route, the rest is the
// body. Same steps as handlers::parse_request (strict parse, depth 64, T::from_json), then what
// the handler validates next (model names, generation options through the engine's range checks),
// and, for an accepted request, that to_json() parses back.
#include <algorithm>

#include "daemon/gen_options.h"
#include "daemon/protocol.h"
#include "engine/json_strict.h"
#include "engine/sampler.h"
#include "fuzz/fuzz_common.h"

using namespace gptqd;
using nlohmann::json;

namespace {

constexpr int kMaxJsonDepth = 64;  // handler_support.cpp

void check_ref(const std::string& text) {
  std::string why;
  if (auto ref = protocol::parse_model_ref(text, &why)) {
    std::string why2;
    if (!protocol::parse_model_ref(ref->str(), &why2)) {
      std::fprintf(stderr, "model ref %s normalizes to %s, which is refused: %s\n", text.c_str(), ref->str().c_str(),
                   why2.c_str());
      std::abort();
    }
  }
}

// What generate_handlers.cpp runs on the options (daemon/gen_options.h), without the model; then
// the stop strings through the matcher. Only an internal error is a bug.
void check_options(const protocol::GenOptions& o) {
  try {
    const engine::GenerateOptions g = daemon::to_engine_options(o, 1);
    if (!g.stop.empty()) {
      engine::StopMatcher m(g.stop);
      (void)m.push("Hello world, this is a stop test");
    }
  } catch (const Error& e) {
    if (e.code() == ErrorCode::internal) throw;
  }
}

template <typename T>
void round_trip(const T& r) {
  (void)T::from_json(json::parse(r.to_json().dump()));
}

void run(uint8_t route, const json& body) {
  switch (route % 12) {
    case 0: {  // POST /api/pull
      auto r = protocol::PullRequest::from_json(body);
      if (!r.name.empty()) check_ref(r.name);
      round_trip(r);
      break;
    }
    case 1: {  // POST /api/show, DELETE /api/delete
      auto r = protocol::ModelRequest::from_json(body);
      check_ref(r.model);
      round_trip(r);
      break;
    }
    case 2: {  // POST /api/generate
      auto r = protocol::GenerateRequest::from_json(body);
      check_ref(r.model);
      check_options(r.options);
      round_trip(r);
      break;
    }
    case 3: {  // POST /api/chat
      auto r = protocol::ChatRequest::from_json(body);
      check_ref(r.model);
      check_options(r.options);
      round_trip(r);
      break;
    }
    case 4:  // POST /v1/chat/completions
    case 5: {  // POST /v1/completions
      auto r = protocol::OpenAiRequest::from_json(body, route % 12 == 4);
      check_ref(r.model);
      check_options(r.options);
      break;
    }
    case 6: {  // POST /api/eval
      auto r = protocol::EvalRequest::from_json(body);
      check_ref(r.model);
      round_trip(r);
      break;
    }
    case 7: {  // POST /api/quantize
      auto r = protocol::QuantizeRequest::from_json(body);
      check_ref(r.model);
      check_ref(r.model + ":" + r.default_tag());
      round_trip(r);
      break;
    }
    case 8: {  // POST /api/datasets
      round_trip(protocol::DatasetAddRequest::from_json(body));
      break;
    }
    case 9: {  // POST /api/datasets/pull
      round_trip(protocol::DatasetPullRequest::from_json(body));
      break;
    }
    case 10: {  // gptqctl reads /api/tags and /api/show answers
      auto e = protocol::ModelEntry::from_json(body);
      (void)e.to_json(true).dump();
      break;
    }
    case 11: {  // keep_alive and model refs alone
      (void)protocol::parse_keep_alive(body);
      if (body.is_string()) check_ref(body.get<std::string>());
      break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string_view text = fuzz::to_text(data + 1, size - 1);
  fuzz::expect_clean([&] {
    if (text.empty()) return;  // parse_body: "request body is empty"
    const json body = engine::parse_json_strict(text, "request body", kMaxJsonDepth);
    try {
      run(data[0], body);
    } catch (const protocol::RequestError& e) {
      if (std::string_view(e.what()).empty()) std::abort();
    }
  });
  return 0;
}
