// SPDX-License-Identifier: Apache-2.0
// ChatTemplate: the five chat formats gptqd renders without a Jinja engine, each written to match
// what the model's own template renders under Hugging Face's settings byte for byte (engine layer).
#include "engine/chat_template.h"

#include <cstdint>
#include <optional>

#include "engine/error.h"

namespace gptqd::engine {
namespace {

constexpr std::string_view kLlama3DefaultDate = "26 Jul 2024";  // the Llama 3.1/3.2 templates' own default

bool contains(std::string_view text, std::string_view needle) { return text.find(needle) != std::string_view::npos; }

// Length of the UTF-8 sequence at s[i] and its code point; nullopt when malformed (overlong,
// surrogate, beyond U+10FFFF, truncated).
std::optional<std::pair<size_t, char32_t>> decode_utf8(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return std::pair<size_t, char32_t>{1, b0};
  size_t len = 0;
  char32_t cp = 0;
  char32_t min = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return std::nullopt;
  }
  if (i + len > s.size()) return std::nullopt;
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return std::nullopt;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return std::nullopt;
  return std::pair<size_t, char32_t>{len, cp};
}

// Python's str.isspace(), which Jinja's |trim and str.strip() use.
bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Python's str.strip() on valid UTF-8 (check() has validated every message).
std::string_view python_strip(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    const auto d = decode_utf8(s, begin);
    if (!d || !is_python_space(d->second)) break;
    begin += d->first;
  }
  size_t end = s.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    const auto d = decode_utf8(s, start);
    if (!d || !is_python_space(d->second)) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

// Jinja string literals inside {{ ... }} and {% ... %} tags, escapes decoded (Jinja uses
// Python's string escapes; templates in the wild use \n, \t, \\, \' and \").
std::vector<std::string> string_literals(std::string_view text) {
  std::vector<std::string> out;
  size_t i = 0;
  while ((i = text.find('{', i)) != std::string_view::npos) {
    if (i + 1 >= text.size() || (text[i + 1] != '{' && text[i + 1] != '%')) {
      ++i;
      continue;
    }
    const char close = text[i + 1] == '{' ? '}' : '%';
    for (i += 2; i < text.size(); ++i) {
      const char c = text[i];
      if (c == close && i + 1 < text.size() && text[i + 1] == '}') {
        i += 2;
        break;
      }
      if (c != '\'' && c != '"') continue;
      std::string literal;
      for (++i; i < text.size() && text[i] != c; ++i) {
        if (text[i] == '\\' && i + 1 < text.size()) {
          const char e = text[++i];
          switch (e) {
            case 'n': literal += '\n'; break;
            case 't': literal += '\t'; break;
            case 'r': literal += '\r'; break;
            case '\\':
            case '\'':
            case '"': literal += e; break;
            default:
              literal += '\\';
              literal += e;
              break;
          }
        } else {
          literal += text[i];
        }
      }
      out.push_back(std::move(literal));
    }
  }
  return out;
}

// The system prompt a ChatML template writes when the conversation has none: the text of a
// literal '<|im_start|>system\n...<|im_end|>' (Qwen2.5, SmolLM2).
std::string chatml_default_system(std::string_view text) {
  constexpr std::string_view open = "<|im_start|>system\n";
  for (const std::string& literal : string_literals(text)) {
    if (!literal.starts_with(open)) continue;
    const size_t end = literal.find("<|im_end|>", open.size());
    if (end != std::string::npos && end > open.size()) return literal.substr(open.size(), end - open.size());
  }
  return {};
}

// The first literal a template assigns with `{% set NAME = "..." %}` (Llama 3.2 first tries
// strftime_now(), then falls back to a literal).
std::optional<std::string> set_literal(std::string_view text, std::string_view name) {
  const std::string needle = cat("set ", name, " = ");
  for (size_t at = text.find(needle); at != std::string_view::npos; at = text.find(needle, at + 1)) {
    const size_t quote = at + needle.size();
    if (quote >= text.size() || (text[quote] != '"' && text[quote] != '\'')) continue;
    const std::vector<std::string> literals = string_literals(cat("{{ ", text.substr(quote), " }}"));
    if (!literals.empty()) return literals.front();
  }
  return std::nullopt;
}

// `{{ bos_token }}` (any spacing, optional whitespace control) before anything else.
bool opens_with_bos(std::string_view text) {
  size_t i = text.find_first_not_of(" \t\r\n");
  if (i == std::string_view::npos || text.substr(i, 2) != "{{") return false;
  i = text.find_first_not_of(" -", i + 2);
  if (i == std::string_view::npos || text.substr(i, 9) != "bos_token") return false;
  i = text.find_first_not_of(" -", i + 9);
  return i != std::string_view::npos && text.substr(i, 2) == "}}";
}

// The first ~80 bytes of a template for an error message, on one line.
std::string template_excerpt(std::string_view text) {
  constexpr size_t kMax = 80;
  std::string out;
  size_t i = 0;
  while (i < text.size() && i < kMax) {
    const auto d = decode_utf8(text, i);
    const size_t len = d ? d->first : 1;
    const char c = text[i];
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r' || c == '\t') {
      out += ' ';
    } else if (d) {
      out.append(text.substr(i, len));
    } else {
      out += '?';
    }
    i += len;
  }
  if (i < text.size()) out += "...";
  return out;
}

[[noreturn]] void fail_unknown(std::string_view text) {
  fail(ErrorCode::unsupported, "unknown chat template '", template_excerpt(text), "'; use raw mode");
}

bool has_system(std::span<const ChatMessage> messages) { return messages.front().role == "system"; }

}  // namespace

ChatTemplate ChatTemplate::detect(std::string_view text) {
  if (contains(text, "<|start_header_id|>") && contains(text, "<|end_header_id|>") && contains(text, "<|eot_id|>")) {
    ChatTemplate t(ChatFamily::llama3);
    if (contains(text, "Cutting Knowledge Date")) {
      t.date_string_ = set_literal(text, "date_string").value_or(std::string(kLlama3DefaultDate));
    }
    return t;
  }
  // Phi-4 writes <|im_start|>role<|im_sep|>: a different format with the same markers.
  if (contains(text, "<|im_start|>") && contains(text, "<|im_end|>") && !contains(text, "<|im_sep|>")) {
    ChatTemplate t(ChatFamily::chatml);
    t.default_system_ = chatml_default_system(text);
    t.opens_with_bos_ = opens_with_bos(text);
    if (!t.opens_with_bos_ && contains(text, "bos_token")) fail_unknown(text);
    return t;
  }
  if (contains(text, "[INST]") && contains(text, "[/INST]")) {
    if (contains(text, "<<SYS>>")) return ChatTemplate(ChatFamily::llama2);
    ChatTemplate t(ChatFamily::mistral);
    if (contains(text, "' [INST] '") || contains(text, "\" [INST] \"")) return t;
    // v0.1 and the first v0.2 template: "[INST] " without the leading space, reply without one.
    if ((contains(text, "'[INST] '") || contains(text, "\"[INST] \"")) &&
        (contains(text, "' [/INST]'") || contains(text, "\" [/INST]\""))) {
      t.mistral_legacy_ = true;
      return t;
    }
    fail_unknown(text);  // v3 / tekken / v7 forms: spacing and system placement differ
  }
  // Phi-3 shares <|user|>/<|assistant|> but ends turns with <|end|>, not EOS.
  if (contains(text, "<|user|>") && contains(text, "<|assistant|>") && contains(text, "eos_token") &&
      !contains(text, "<|end|>")) {
    ChatTemplate t(ChatFamily::zephyr);
    t.opens_with_bos_ = opens_with_bos(text);
    return t;
  }
  fail_unknown(text);
}

ChatTemplate ChatTemplate::of(ChatFamily family) { return ChatTemplate(family); }

const char* ChatTemplate::name() const {
  switch (family_) {
    case ChatFamily::chatml: return "chatml";
    case ChatFamily::llama2: return "llama-2";
    case ChatFamily::llama3: return "llama-3";
    case ChatFamily::mistral: return "mistral";
    case ChatFamily::zephyr: return "zephyr";
  }
  return "unknown";
}

std::vector<std::string> ChatTemplate::stop_strings() const {
  // The end-of-turn marker plus the start of the next turn, for a model that skips its EOS.
  switch (family_) {
    case ChatFamily::chatml: return {"<|im_end|>", "<|im_start|>"};
    case ChatFamily::llama3: return {"<|eot_id|>", "<|eom_id|>", "<|start_header_id|>"};
    case ChatFamily::llama2:
    case ChatFamily::mistral: return {"[INST]"};
    case ChatFamily::zephyr: return {"</s>", "<|user|>"};
  }
  return {};
}

void ChatTemplate::check(std::span<const ChatMessage> messages) const {
  if (messages.empty()) fail(ErrorCode::invalid_argument, "a chat needs at least one message");
  const bool alternate = family_ == ChatFamily::llama2 || family_ == ChatFamily::mistral;
  const size_t first_turn = has_system(messages) ? 1 : 0;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      fail(ErrorCode::invalid_argument, "message ", i, " has role '", m.role,
           "'; expected 'system', 'user' or 'assistant'");
    }
    if (m.role == "system" && i != 0) {
      fail(ErrorCode::invalid_argument, "message ", i, " (system): a system message may only come first");
    }
    for (size_t k = 0; k < m.content.size();) {
      const auto d = decode_utf8(m.content, k);
      if (!d)
        fail(ErrorCode::invalid_argument, "message ", i, " (", m.role, "): content is not valid UTF-8 at byte ", k);
      k += d->first;
    }
    // The Llama 2 and Mistral templates raise on anything but user/assistant/user/...
    if (alternate && i >= first_turn) {
      const char* expected = (i - first_turn) % 2 == 0 ? "user" : "assistant";
      if (m.role != expected) {
        fail(ErrorCode::invalid_argument, "message ", i, " (", m.role, "): the ", name(),
             " chat format needs roles alternating user/assistant after the optional system message; expected ",
             expected);
      }
    }
  }
}

std::string ChatTemplate::render(std::span<const ChatMessage> messages, bool add_generation_prompt,
                                 const std::string& bos, const std::string& eos) const {
  check(messages);
  switch (family_) {
    case ChatFamily::chatml: return render_chatml(messages, add_generation_prompt, bos);
    case ChatFamily::llama2: return render_llama2(messages, bos, eos);
    case ChatFamily::llama3: return render_llama3(messages, add_generation_prompt, bos);
    case ChatFamily::mistral: return render_mistral(messages, bos, eos);
    case ChatFamily::zephyr: return render_zephyr(messages, add_generation_prompt, bos, eos);
  }
  fail(ErrorCode::internal, "chat family ", static_cast<int>(family_), " has no renderer");
}

// <|im_start|>role\ncontent<|im_end|>\n per message.
std::string ChatTemplate::render_chatml(std::span<const ChatMessage> messages, bool add_generation_prompt,
                                        const std::string& bos) const {
  std::string out = opens_with_bos_ ? bos : std::string();
  if (!default_system_.empty() && !has_system(messages)) {
    out += cat("<|im_start|>system\n", default_system_, "<|im_end|>\n");
  }
  for (const ChatMessage& m : messages) out += cat("<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

// Llama-2-chat: <s>[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] reply </s><s>[INST] ... with
// each turn strip()ed (after the system block is prepended, as the template does). The prompt
// always ends with [/INST] after a user turn, so add_generation_prompt changes nothing.
std::string ChatTemplate::render_llama2(std::span<const ChatMessage> messages, const std::string& bos,
                                        const std::string& eos) const {
  const bool system = has_system(messages);
  std::string out;
  for (size_t i = system ? 1 : 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const std::string content =
        (system && i == 1) ? cat("<<SYS>>\n", messages[0].content, "\n<</SYS>>\n\n", m.content) : m.content;
    if (m.role == "user") {
      out += cat(bos, "[INST] ", python_strip(content), " [/INST]");
    } else {
      out += cat(" ", python_strip(content), " ", eos);
    }
  }
  return out;
}

// <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent|trim<|eot_id|> per message;
// 3.1+ templates always open with a system turn carrying the knowledge/today dates.
std::string ChatTemplate::render_llama3(std::span<const ChatMessage> messages, bool add_generation_prompt,
                                        const std::string& bos) const {
  auto turn = [](std::string_view role, std::string_view content) {
    return cat("<|start_header_id|>", role, "<|end_header_id|>\n\n", content, "<|eot_id|>");
  };
  std::string out = bos;
  size_t first = 0;
  if (!date_string_.empty()) {
    const std::string_view system = has_system(messages) ? python_strip(messages[0].content) : std::string_view();
    out += turn("system", cat("Cutting Knowledge Date: December 2023\nToday Date: ", date_string_, "\n\n", system));
    first = has_system(messages) ? 1 : 0;
  }
  for (size_t i = first; i < messages.size(); ++i) out += turn(messages[i].role, python_strip(messages[i].content));
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

// Mistral v1: <s> [INST] system\n\nuser [/INST] reply</s> [INST] ... (v0.1: "[INST] " and no space
// before the reply). Contents are not stripped; add_generation_prompt changes nothing.
std::string ChatTemplate::render_mistral(std::span<const ChatMessage> messages, const std::string& bos,
                                         const std::string& eos) const {
  const bool system = has_system(messages);
  const std::string_view open = mistral_legacy_ ? "[INST] " : " [INST] ";
  const std::string_view reply = mistral_legacy_ ? "" : " ";
  std::string out = bos;
  for (size_t i = system ? 1 : 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user") {
      out += open;
      if (system && i == 1) out += cat(messages[0].content, "\n\n");
      out += cat(m.content, " [/INST]");
    } else {
      out += cat(reply, m.content, eos);
    }
  }
  return out;
}

// Zephyr: <|role|>\ncontent</s>\n per message, then <|assistant|>\n.
std::string ChatTemplate::render_zephyr(std::span<const ChatMessage> messages, bool add_generation_prompt,
                                        const std::string& bos, const std::string& eos) const {
  std::string out = opens_with_bos_ ? bos : std::string();
  for (const ChatMessage& m : messages) out += cat("<|", m.role, "|>\n", m.content, eos, "\n");
  if (add_generation_prompt) out += "<|assistant|>\n";
  return out;
}

}  // namespace gptqd::engine
