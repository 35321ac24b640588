// SPDX-License-Identifier: Apache-2.0
// ChatTemplate: family detection from real template texts, message validation, and byte-for-byte
// parity with the templates rendered by jinja2 under Hugging Face's settings
// (tests/reference/chat_template_reference.py) (tests).
#include "engine/chat_template.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/gguf.h"
#include "tests/support/test_env.h"

namespace gptqd::engine {
namespace {

using Messages = std::vector<ChatMessage>;
using nlohmann::json;

// A real chat template and the BOS/EOS texts of its model's tokenizer.
struct TemplateCase {
  std::string label;
  std::filesystem::path path;  // empty: SmolLM2's, read from the test GGUF
  ChatFamily family;
  std::string bos, eos;
};

std::filesystem::path shared_templates() { return test::shared_data_dir() / "chat-templates"; }
std::filesystem::path our_templates() { return test::source_dir() / "tests" / "reference" / "chat_templates"; }

const std::vector<TemplateCase>& template_cases() {
  static const std::vector<TemplateCase> cases = {
      {"Llama-3.1-8B-Instruct", shared_templates() / "meta-llama-Llama-3.1-8B-Instruct.jinja", ChatFamily::llama3,
       "<|begin_of_text|>", "<|eot_id|>"},
      {"Llama-3.2-3B-Instruct", shared_templates() / "meta-llama-Llama-3.2-3B-Instruct.jinja", ChatFamily::llama3,
       "<|begin_of_text|>", "<|eot_id|>"},
      {"Qwen2.5-7B-Instruct", shared_templates() / "Qwen-Qwen2.5-7B-Instruct.jinja", ChatFamily::chatml, "",
       "<|im_end|>"},
      {"SmolLM2-135M-Instruct", {}, ChatFamily::chatml, "<|im_start|>", "<|im_end|>"},
      {"Meta-Llama-3-8B-Instruct", our_templates() / "meta-llama-Meta-Llama-3-8B-Instruct.jinja", ChatFamily::llama3,
       "<|begin_of_text|>", "<|eot_id|>"},
      {"Llama-2-chat", our_templates() / "meta-llama-Llama-2-chat.jinja", ChatFamily::llama2, "<s>", "</s>"},
      {"Mistral-7B-Instruct-v0.1", our_templates() / "mistralai-Mistral-7B-Instruct-v0.1.jinja", ChatFamily::mistral,
       "<s>", "</s>"},
      {"Mistral-7B-Instruct-v0.2-v1", our_templates() / "mistralai-Mistral-7B-Instruct-v0.2-v1.jinja",
       ChatFamily::mistral, "<s>", "</s>"},
      {"zephyr-7b-beta", our_templates() / "HuggingFaceH4-zephyr-7b-beta.jinja", ChatFamily::zephyr, "<s>", "</s>"},
      {"OpenHermes-2.5-Mistral-7B", our_templates() / "teknium-OpenHermes-2.5-Mistral-7B.jinja", ChatFamily::chatml,
       "<s>", "<|im_end|>"},
      {"chatml-with-bos", our_templates() / "chatml-with-bos.jinja", ChatFamily::chatml, "<s>", "<|im_end|>"},
  };
  return cases;
}

// The template text, or nullopt when the asset is missing (SmolLM2's GGUF is fetched separately).
std::optional<std::string> template_text(const TemplateCase& c) {
  if (c.path.empty()) {
    const std::filesystem::path gguf = test::test_model_path();
    if (!std::filesystem::exists(gguf)) return std::nullopt;
    return GgufFile::open(gguf.string()).get_string("tokenizer.chat_template");
  }
  if (!std::filesystem::exists(c.path)) return std::nullopt;
  return test::read_file(c.path);
}

#define GPTQD_REQUIRE_TEMPLATE(text, c)                                                            \
  do {                                                                                             \
    if (!(text)) {                                                                                 \
      const std::filesystem::path missing = (c).path.empty() ? test::test_model_path() : (c).path; \
      GPTQD_REQUIRE_FILE(missing);                                                                 \
    }                                                                                              \
  } while (0)

std::string error_of(const ChatTemplate& t, const Messages& m, ErrorCode expected = ErrorCode::invalid_argument) {
  try {
    t.render(m, true, "<s>", "</s>");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), expected) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected Error";
  return {};
}

std::string detect_error(std::string_view text) {
  try {
    ChatTemplate::detect(text);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::unsupported) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected Error(unsupported)";
  return {};
}

bool contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

// ---- detection ----

TEST(ChatTemplateDetect, EveryRealTemplate) {
  for (const TemplateCase& c : template_cases()) {
    const auto text = template_text(c);
    GPTQD_REQUIRE_TEMPLATE(text, c);
    const ChatTemplate t = ChatTemplate::detect(*text);
    EXPECT_EQ(t.family(), c.family) << c.label << " detected as " << t.name();
  }
}

TEST(ChatTemplateDetect, Names) {
  EXPECT_STREQ(ChatTemplate::of(ChatFamily::chatml).name(), "chatml");
  EXPECT_STREQ(ChatTemplate::of(ChatFamily::llama2).name(), "llama-2");
  EXPECT_STREQ(ChatTemplate::of(ChatFamily::llama3).name(), "llama-3");
  EXPECT_STREQ(ChatTemplate::of(ChatFamily::mistral).name(), "mistral");
  EXPECT_STREQ(ChatTemplate::of(ChatFamily::zephyr).name(), "zephyr");
}

TEST(ChatTemplateDetect, DefaultSystemPromptsComeFromTheTemplateText) {
  const Messages hello = {{"user", "Hello"}};
  const auto qwen = template_text(template_cases()[2]);
  GPTQD_REQUIRE_TEMPLATE(qwen, template_cases()[2]);
  EXPECT_EQ(ChatTemplate::detect(*qwen).render(hello, false, "", ""),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n");
  const auto smol = template_text(template_cases()[3]);
  GPTQD_REQUIRE_TEMPLATE(smol, template_cases()[3]);
  EXPECT_EQ(ChatTemplate::detect(*smol).render(hello, false, "", ""),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n");
  // A template without one inserts nothing.
  EXPECT_EQ(ChatTemplate::of(ChatFamily::chatml).render(hello, false, "", ""), "<|im_start|>user\nHello<|im_end|>\n");
}

TEST(ChatTemplateDetect, LlamaDateComesFromTheTemplateText) {
  // A made-up 3.1-style template with another default date: the date is read, not hard-coded.
  const std::string text =
      "{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = \"01 Jan 2030\" %}{%- endif %}"
      "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}{{- \"Cutting Knowledge Date: December 2023\\n\" }}"
      "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}{{- \"<|eot_id|>\" }}";
  const ChatTemplate t = ChatTemplate::detect(text);
  EXPECT_EQ(ChatTemplate::detect(std::string("{%- set date_string = strftime_now(\"%d %b %Y\") %}") + text)
                .render(Messages{{"user", "hi"}}, true, "<|begin_of_text|>", ""),
            t.render(Messages{{"user", "hi"}}, true, "<|begin_of_text|>", ""));
  EXPECT_EQ(t.render(Messages{{"user", "hi"}}, true, "<|begin_of_text|>", ""),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
            "Today Date: 01 Jan 2030\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateDetect, UnknownTemplatesAreRefusedWithTheirStart) {
  // gemma-7b-it: a format gptqd does not render.
  const std::string gemma =
      "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
      "{% for message in messages %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + "
      "'<end_of_turn>\\n' }}{% endfor %}";
  const std::string message = detect_error(gemma);
  EXPECT_TRUE(message.starts_with("unknown chat template '{% if messages[0]['role'] == 'system' %}")) << message;
  EXPECT_TRUE(contains(message, "...'; use raw mode")) << message;
  EXPECT_LT(message.size(), 140u) << message;

  // Multi-line templates are quoted on one line.
  EXPECT_TRUE(contains(detect_error("{% for m in messages %}\n{{ m.content }}\n{% endfor %}"),
                       "'{% for m in messages %}\\n{{ m.content }}\\n{% endfor %}'; use raw mode"));
  detect_error("");
  // Look-alikes with the same markers but another format.
  detect_error(
      "{% for message in messages %}{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}"
      "{% endfor %}");  // phi-4
  detect_error(
      "{{ bos_token }}{% for message in messages %}{{'<|user|>' + '\\n' + message['content'] + '<|end|>' + "
      "'\\n' + '<|assistant|>' + '\\n'}}{% endfor %}");  // phi-3
  detect_error(
      "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
      "message['content'] + '[/INST]' }}{% elif message['role'] == 'system' %}{{ '[SYSTEM_PROMPT] ' + "
      "message['content'] + '[/SYSTEM_PROMPT]' }}{% endif %}{% endfor %}");  // Mistral v7
}

// ---- validation ----

TEST(ChatTemplateValidate, RejectsEmptyConversations) {
  EXPECT_TRUE(contains(error_of(ChatTemplate::of(ChatFamily::chatml), {}), "at least one message"));
}

TEST(ChatTemplateValidate, RejectsUnknownRolesNamingIndexAndRole) {
  for (ChatFamily f :
       {ChatFamily::chatml, ChatFamily::llama2, ChatFamily::llama3, ChatFamily::mistral, ChatFamily::zephyr}) {
    const std::string e = error_of(ChatTemplate::of(f), {{"user", "hi"}, {"tool", "42"}});
    EXPECT_TRUE(contains(e, "message 1 has role 'tool'")) << e;
  }
  EXPECT_TRUE(contains(error_of(ChatTemplate::of(ChatFamily::llama3), {{"User", "hi"}}), "message 0 has role 'User'"));
}

TEST(ChatTemplateValidate, SystemOnlyFirst) {
  const std::string e =
      error_of(ChatTemplate::of(ChatFamily::chatml), {{"user", "hi"}, {"assistant", "yo"}, {"system", "late"}});
  EXPECT_TRUE(contains(e, "message 2 (system)")) << e;
}

TEST(ChatTemplateValidate, Llama2AndMistralNeedAlternatingTurns) {
  for (ChatFamily f : {ChatFamily::llama2, ChatFamily::mistral}) {
    const ChatTemplate t = ChatTemplate::of(f);
    std::string e = error_of(t, {{"user", "a"}, {"user", "b"}});
    EXPECT_TRUE(contains(e, "message 1 (user)")) << e;
    EXPECT_TRUE(contains(e, "expected assistant")) << e;
    e = error_of(t, {{"system", "s"}, {"assistant", "a"}});
    EXPECT_TRUE(contains(e, "message 1 (assistant)")) << e;
    e = error_of(t, {{"assistant", "a"}});
    EXPECT_TRUE(contains(e, "message 0 (assistant)")) << e;
  }
  // The other families take any order.
  EXPECT_NO_THROW(ChatTemplate::of(ChatFamily::chatml).render(Messages{{"user", "a"}, {"user", "b"}}, true, "", ""));
}

TEST(ChatTemplateValidate, ContentMustBeUtf8) {
  const std::string e = error_of(ChatTemplate::of(ChatFamily::llama3), {{"user", "ok"}, {"assistant", "bad \xC3("}});
  EXPECT_TRUE(contains(e, "message 1 (assistant)")) << e;
  EXPECT_TRUE(contains(e, "UTF-8")) << e;
  error_of(ChatTemplate::of(ChatFamily::chatml), {{"user", "\xED\xA0\x80"}});  // a surrogate
  error_of(ChatTemplate::of(ChatFamily::chatml), {{"user", "\xC0\xAF"}});      // overlong
}

// ---- the formats as their model cards describe them ----

TEST(ChatTemplateRender, Llama2) {
  const ChatTemplate t = ChatTemplate::of(ChatFamily::llama2);
  EXPECT_EQ(t.render(Messages{{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Why?"}}, true,
                     "<s>", "</s>"),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Why? [/INST]");
}

TEST(ChatTemplateRender, Mistral) {
  const ChatTemplate t = ChatTemplate::of(ChatFamily::mistral);
  EXPECT_EQ(t.render(Messages{{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Why?"}}, true,
                     "<s>", "</s>"),
            "<s> [INST] Be brief.\n\nHi [/INST] Hello!</s> [INST] Why? [/INST]");
}

TEST(ChatTemplateRender, MistralLegacyMergesTheSystemMessage) {
  // v0.1's own template raises on a system message; gptqd prepends it to the first user turn as
  // Mistral's later templates do.
  const auto text = template_text(template_cases()[6]);
  GPTQD_REQUIRE_TEMPLATE(text, template_cases()[6]);
  const ChatTemplate t = ChatTemplate::detect(*text);
  EXPECT_EQ(t.render(Messages{{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Why?"}}, true,
                     "<s>", "</s>"),
            "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Why? [/INST]");
}

TEST(ChatTemplateRender, Zephyr) {
  const ChatTemplate t = ChatTemplate::of(ChatFamily::zephyr);
  EXPECT_EQ(t.render(Messages{{"system", "Be brief."}, {"user", "Hi"}}, true, "<s>", "</s>"),
            "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n");
  EXPECT_EQ(t.render(Messages{{"user", "Hi"}}, false, "<s>", "</s>"), "<|user|>\nHi</s>\n");
}

TEST(ChatTemplateRender, Llama3) {
  const ChatTemplate t = ChatTemplate::of(ChatFamily::llama3);
  EXPECT_EQ(
      t.render(Messages{{"system", " Be brief. "}, {"user", "Hi\n"}}, true, "<|begin_of_text|>", ""),
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateRender, ChatML) {
  const ChatTemplate t = ChatTemplate::of(ChatFamily::chatml);
  EXPECT_EQ(t.render(Messages{{"system", "S"}, {"user", "U"}, {"assistant", "A"}}, true, "", ""),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateStops, EachFamilyEndsItsTurn) {
  auto has = [](ChatFamily f, const std::string& s) {
    const auto stops = ChatTemplate::of(f).stop_strings();
    return std::find(stops.begin(), stops.end(), s) != stops.end();
  };
  EXPECT_TRUE(has(ChatFamily::chatml, "<|im_end|>"));
  EXPECT_TRUE(has(ChatFamily::llama3, "<|eot_id|>"));
  EXPECT_TRUE(has(ChatFamily::llama2, "[INST]"));
  EXPECT_TRUE(has(ChatFamily::mistral, "[INST]"));
  EXPECT_TRUE(has(ChatFamily::zephyr, "</s>"));
  EXPECT_TRUE(has(ChatFamily::zephyr, "<|user|>"));
  for (ChatFamily f :
       {ChatFamily::chatml, ChatFamily::llama2, ChatFamily::llama3, ChatFamily::mistral, ChatFamily::zephyr}) {
    for (const std::string& s : ChatTemplate::of(f).stop_strings()) EXPECT_FALSE(s.empty());
  }
}

// ---- parity with jinja2 ----

struct Conversation {
  std::string label;
  Messages messages;
};

const std::vector<Conversation>& conversations() {
  static const std::vector<Conversation> list = {
      {"single user turn", {{"user", "Hello, how are you?"}}},
      {"system and user", {{"system", "You are a pirate."}, {"user", "Where is the treasure?"}}},
      {"multi-turn with system",
       {{"system", "You are a helpful assistant"},
        {"user", "Hello"},
        {"assistant", "Hi there"},
        {"user", "Who are you"},
        {"assistant", "   I am an assistant   "},
        {"user", "Another question"}}},
      {"multi-turn ending with the assistant",
       {{"user", "2+2?"}, {"assistant", "4"}, {"user", "and 3+3?"}, {"assistant", "6\n"}}},
      {"special characters and markers",
       {{"user",
         "Line 1\nLine 2\n\n\tindented \"double\" 'single' \\backslash {{ not jinja }} {% raw %} <b>html</b> "
         "<|im_end|> [INST] <|eot_id|> </s> <<SYS>>"},
        {"assistant", "Sure:\n```\ncode\n```\n"},
        {"user", "\n\n  surrounded by blank lines  \n\n"}}},
      {"unicode",
       {{"system", "\u3000Réponds en français.\u00a0"},
        {"user", "Grüße! 日本語のテキスト 🎉 עברית \u2028"},
        {"assistant", "\u2003Ответ: да.\u200a"},
        {"user", "ok\u0085"}}},
      {"empty and blank contents", {{"system", ""}, {"user", ""}, {"assistant", "   "}, {"user", " "}}},
      {"system only", {{"system", "Only a system prompt."}}},
      {"assistant first", {{"assistant", "I speak first."}, {"user", "Fine."}}},
      {"two user turns in a row", {{"user", "one"}, {"user", "two"}}},
  };
  return list;
}

json to_json(const Messages& messages) {
  json out = json::array();
  for (const ChatMessage& m : messages) out.push_back({{"role", m.role}, {"content", m.content}});
  return out;
}

TEST(ChatTemplateParity, MatchesJinja2ByteForByte) {
  const std::filesystem::path script = test::source_dir() / "tests" / "reference" / "chat_template_reference.py";
  GPTQD_REQUIRE_FILE(test::python());
  int compared = 0;
  for (const TemplateCase& c : template_cases()) {
    const auto text = template_text(c);
    if (!text) {
      if (test::under_ci()) ADD_FAILURE() << "missing template for " << c.label;
      continue;
    }
    SCOPED_TRACE(c.label);
    const ChatTemplate t = ChatTemplate::detect(*text);
    const bool legacy_mistral = c.label == "Mistral-7B-Instruct-v0.1";

    test::TempDir dir;
    json cases = json::array();
    struct Sent {
      const Conversation* conversation;
      bool add_generation_prompt;
    };
    std::vector<Sent> sent;
    for (const Conversation& conv : conversations()) {
      // v0.1's template raises on any system message; gptqd merges it (tested above).
      if (legacy_mistral && conv.messages.front().role == "system") continue;
      for (bool agp : {true, false}) {
        cases.push_back({{"messages", to_json(conv.messages)},
                         {"add_generation_prompt", agp},
                         {"bos_token", c.bos},
                         {"eos_token", c.eos}});
        sent.push_back({&conv, agp});
      }
    }
    test::write_file(dir / "template.jinja", *text);
    test::write_file(dir / "cases.json", cases.dump());
    const test::CommandResult r =
        test::run_command({test::python().string(), script.string(), (dir / "template.jinja").string(),
                           (dir / "cases.json").string(), (dir / "out.json").string()});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const json results = json::parse(test::read_file(dir / "out.json"));
    ASSERT_EQ(results.size(), sent.size());

    for (size_t i = 0; i < sent.size(); ++i) {
      const Conversation& conv = *sent[i].conversation;
      const bool agp = sent[i].add_generation_prompt;
      const json& ref = results[i];
      std::optional<std::string> ours;
      std::string our_error;
      try {
        ours = t.render(conv.messages, agp, c.bos, c.eos);
      } catch (const Error& e) {
        our_error = e.what();
      }
      if (ref.contains("error")) {
        // The template refuses the conversation (raise_exception): so must we.
        EXPECT_FALSE(ours) << conv.label << " (add_generation_prompt " << agp << "): jinja2 raised '"
                           << ref["error"].get<std::string>() << "' but we rendered\n"
                           << *ours;
      } else if (!ours) {
        // We refuse only what the Llama 2 / Mistral templates also refuse; anywhere else a
        // refusal must be one of the roles rules that apply to every family.
        ADD_FAILURE() << conv.label << " (add_generation_prompt " << agp
                      << "): jinja2 rendered but we failed: " << our_error;
      } else {
        EXPECT_EQ(*ours, ref["text"].get<std::string>()) << conv.label << " (add_generation_prompt " << agp << ")";
        ++compared;
      }
    }
  }
  RecordProperty("renders_compared", compared);
  EXPECT_GT(compared, 0);
}

}  // namespace
}  // namespace gptqd::engine
