// SPDX-License-Identifier: Apache-2.0
// Fuzzes chat-template detection and rendering. Input, NUL-separated: the template source, a flags
// field (bit 0 of its first byte: add_generation_prompt), the BOS text, the EOS text, then
// role/content pairs. Roles are whatever the input says (unknown ones must be refused).
#include <vector>

#include "engine/chat_template.h"
#include "fuzz/fuzz_common.h"

using namespace gptqd;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string_view> parts;
  std::string_view rest = fuzz::to_text(data, size);
  for (;;) {
    const size_t nul = rest.find('\0');
    parts.push_back(rest.substr(0, nul));
    if (nul == std::string_view::npos) break;
    rest = rest.substr(nul + 1);
  }
  auto part = [&](size_t i) { return i < parts.size() ? std::string(parts[i]) : std::string(); };
  const bool add_generation_prompt = !part(1).empty() && (part(1)[0] & 1) != 0;
  const std::string bos = part(2), eos = part(3);
  std::vector<engine::ChatMessage> messages;
  for (size_t i = 4; i + 1 < parts.size(); i += 2) messages.push_back({part(i), part(i + 1)});

  fuzz::expect_clean([&] {
    const engine::ChatTemplate t = engine::ChatTemplate::detect(parts[0]);
    (void)t.name();
    (void)t.stop_strings();
    (void)t.render(messages, add_generation_prompt, bos, eos);
  });
  // Every family, whatever the template said.
  for (engine::ChatFamily f : {engine::ChatFamily::chatml, engine::ChatFamily::llama2, engine::ChatFamily::llama3,
                               engine::ChatFamily::mistral, engine::ChatFamily::zephyr}) {
    fuzz::expect_clean([&] { (void)engine::ChatTemplate::of(f).render(messages, add_generation_prompt, bos, eos); });
  }
  return 0;
}
