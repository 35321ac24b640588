// SPDX-License-Identifier: Apache-2.0
// ChatTemplate: renders a conversation into the prompt text a chat model was trained on. The
// family is chosen from the template text the model ships (tokenizer_config.json chat_template
// or GGUF tokenizer.chat_template); gptqd does not run Jinja (engine layer).
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace gptqd::engine {

struct ChatMessage {
  std::string role;     // "system" | "user" | "assistant"
  std::string content;
};

enum class ChatFamily { chatml, llama2, llama3, mistral, zephyr };

class ChatTemplate {
 public:
  // Picks the family by the markers in `template_text` (e.g. "<|im_start|>" -> chatml,
  // "<|start_header_id|>" -> llama3). Error(unsupported) when none matches, quoting the start of
  // the template: the caller then reports it (or the user asks for raw mode) — never a guess.
  static ChatTemplate detect(std::string_view template_text);
  static ChatTemplate of(ChatFamily family);

  ChatFamily family() const { return family_; }
  const char* name() const;  // "chatml", "llama-2", "llama-3", "mistral", "zephyr"

  // The prompt for `messages` (roles checked: Error(invalid_argument) naming the bad one),
  // ending with the assistant header when `add_generation_prompt`. `bos` / `eos` are the
  // tokenizer's BOS/EOS texts ("<s>", "</s>"), used where the family's template writes them;
  // the result is meant to be encoded with parse_special = true and WITHOUT adding another BOS.
  std::string render(std::span<const ChatMessage> messages, bool add_generation_prompt, const std::string& bos,
                     const std::string& eos) const;

  // Text that ends an assistant turn besides EOS ("<|im_end|>", "<|eot_id|>", ...).
  std::vector<std::string> stop_strings() const;

 private:
  explicit ChatTemplate(ChatFamily family) : family_(family) {}
  ChatFamily family_;
  // Variants, read from the template text by detect(); of() leaves them at the family's base form.
  std::string default_system_;   // chatml: a system prompt the template inserts when there is none
  std::string date_string_;      // llama3: non-empty for 3.1+ templates, whose system turn always opens
                                 // with "Cutting Knowledge Date: ...\nToday Date: <date_string_>"
  bool opens_with_bos_ = false;  // chatml, zephyr: the template writes bos_token before everything
  bool mistral_legacy_ = false;  // mistral: v0.1's "[INST] " form rather than v1's " [INST] "

  void check(std::span<const ChatMessage> messages) const;
  std::string render_chatml(std::span<const ChatMessage> messages, bool add_generation_prompt,
                            const std::string& bos) const;
  std::string render_llama2(std::span<const ChatMessage> messages, const std::string& bos,
                            const std::string& eos) const;
  std::string render_llama3(std::span<const ChatMessage> messages, bool add_generation_prompt,
                            const std::string& bos) const;
  std::string render_mistral(std::span<const ChatMessage> messages, const std::string& bos,
                             const std::string& eos) const;
  std::string render_zephyr(std::span<const ChatMessage> messages, bool add_generation_prompt, const std::string& bos,
                            const std::string& eos) const;
};

}  // namespace gptqd::engine
