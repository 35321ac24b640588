// SPDX-License-Identifier: Apache-2.0
// Model-name rules, request parsing and response mapping of the socket API (daemon tests).
#include "daemon/protocol.h"

#include <gtest/gtest.h>

#include <cstdlib>

namespace gptqd::protocol {
namespace {

using nlohmann::json;

TEST(ModelRef, AcceptsNamesAndTags) {
  std::string why;
  auto r = parse_model_ref("smollm2-135m-instruct", &why);
  ASSERT_TRUE(r) << why;
  EXPECT_EQ(r->name, "smollm2-135m-instruct");
  EXPECT_EQ(r->tag, "");
  r = parse_model_ref("Llama-3.2-1B:GPTQ-4b-g128", &why);
  ASSERT_TRUE(r) << why;
  EXPECT_EQ(r->name, "llama-3.2-1b");  // folded to lower case
  EXPECT_EQ(r->tag, "gptq-4b-g128");
  EXPECT_EQ(r->str(), "llama-3.2-1b:gptq-4b-g128");
}

// reliability.md B09/F05: everything that could become a path or a terminal escape is refused.
TEST(ModelRef, RejectsUnsafeNames) {
  const char* bad[] = {"",          "../../x", "/abs/x",  "a/b",        "-rf",      "x..y",    "x--y",
                       "a b",       "a\nb",    "a\x1b[2Jb", ".hidden",  "trailing-", "a:",      "a:b:c",
                       "a%2fb",     "a\\b",    "name;rm", "\xef\xbc\xa1", "a:../x"};
  for (const char* text : bad) {
    std::string why;
    EXPECT_FALSE(parse_model_ref(text, &why)) << "accepted '" << text << "'";
    EXPECT_FALSE(why.empty()) << text;
  }
  std::string why;
  EXPECT_FALSE(parse_model_ref(std::string(97, 'a'), &why));
  EXPECT_NE(why.find("longer than 96"), std::string::npos) << why;
  EXPECT_TRUE(parse_model_ref(std::string(96, 'a'), &why));
  EXPECT_FALSE(parse_model_ref("a:" + std::string(65, 'b'), &why));
  std::string with_nul("ab\0cd", 5);
  EXPECT_FALSE(parse_model_ref(with_nul, &why));
}

TEST(ParamCount, OllamaStyle) {
  EXPECT_EQ(format_param_count(134515008), "135M");
  EXPECT_EQ(format_param_count(1100048384), "1.1B");
  EXPECT_EQ(format_param_count(6738415616), "6.74B");
  EXPECT_EQ(format_param_count(7000000000), "7B");
  EXPECT_EQ(format_param_count(70553706496), "70.6B");
  EXPECT_EQ(format_param_count(260000), "260K");
  EXPECT_EQ(format_param_count(12), "12");
}

TEST(PullRequest, FieldsAndTypeErrors) {
  auto r = PullRequest::from_json(json{{"model", "/x/y.gguf"}, {"name", "a:b"}, {"stream", false}});
  EXPECT_EQ(r.source, "/x/y.gguf");
  EXPECT_EQ(r.name, "a:b");
  EXPECT_FALSE(r.stream);
  EXPECT_TRUE(PullRequest::from_json(json{{"model", "/x"}}).stream);  // default: stream
  try {
    PullRequest::from_json(json{{"model", 5}});
    FAIL() << "a number as model was accepted";
  } catch (const RequestError& e) {
    EXPECT_NE(std::string(e.what()).find("\"model\" must be a string"), std::string::npos) << e.what();
  }
  EXPECT_THROW(PullRequest::from_json(json{{"model", "/x"}, {"stream", "yes"}}), RequestError);
  EXPECT_THROW(PullRequest::from_json(json::object()), RequestError);
  EXPECT_THROW(PullRequest::from_json(json::array()), RequestError);
  // Round trip through the client's serializer.
  auto again = PullRequest::from_json(r.to_json());
  EXPECT_EQ(again.source, r.source);
  EXPECT_EQ(again.name, r.name);
  EXPECT_EQ(again.stream, r.stream);
}

TEST(QuantizeRequest, DefaultsFollowTheReferencesAndBadValuesAreNamed) {
  auto r = QuantizeRequest::from_json(json{{"model", "m"}, {"calib", "wiki"}});
  EXPECT_EQ(r.method, "gptq");
  EXPECT_EQ(r.bits, 4);
  EXPECT_EQ(r.group_size, 128);
  EXPECT_TRUE(r.sym);
  EXPECT_FALSE(r.desc_act);
  EXPECT_DOUBLE_EQ(r.damp_percent, 0.01);
  EXPECT_EQ(r.samples, 128);
  EXPECT_EQ(r.seqlen, 2048);
  EXPECT_EQ(r.seed, 0u);
  EXPECT_FALSE(r.stream);
  EXPECT_EQ(r.default_tag(), "gptq-4b-g128");
  r.desc_act = true;
  EXPECT_EQ(r.default_tag(), "gptq-4b-g128-act");
  r.group_size = -1;
  r.bits = 3;
  r.sym = false;
  EXPECT_EQ(r.default_tag(), "gptq-3b-g-1-act-asym");
  r.method = "rtn";
  EXPECT_EQ(r.default_tag(), "rtn-3b-g-1-asym");
  auto again = QuantizeRequest::from_json(r.to_json());
  EXPECT_EQ(again.to_json(), r.to_json());

  auto refused = [](json j, const std::string& needle) {
    j["model"] = "m";
    try {
      QuantizeRequest::from_json(j);
      ADD_FAILURE() << j.dump() << " was accepted";
    } catch (const RequestError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  refused({{"bits", 5}}, "supported: 2, 3, 4, 8");
  refused({{"bits", "4"}}, "\"bits\" must be an integer");
  refused({{"group_size", 0}}, "group_size");
  refused({{"group_size", -2}}, "group_size");
  refused({{"damp_percent", 0}}, "damp_percent");
  refused({{"damp_percent", 1}}, "damp_percent");
  refused({{"method", "awq"}}, "method");
  refused({{"samples", 0}}, "samples");
  refused({{"seqlen", 1}}, "seqlen");
  refused({{"seed", -1}}, "seed");
  refused({{"max_ppl_ratio", 0.5}}, "max_ppl_ratio");
  refused({{"eval_windows", -1}}, "eval_windows");
  EXPECT_THROW(QuantizeRequest::from_json(json::object()), RequestError);
}

TEST(ModelRequest, AcceptsOllamaNameField) {
  EXPECT_EQ(ModelRequest::from_json(json{{"model", "a:b"}}).model, "a:b");
  EXPECT_EQ(ModelRequest::from_json(json{{"name", "a"}}).model, "a");
  EXPECT_THROW(ModelRequest::from_json(json{{"model", nullptr}}), RequestError);
  EXPECT_THROW(ModelRequest::from_json(json{{"model", json::array()}}), RequestError);
}

// Found by fuzz_json_body: a non-object or a mistyped field escaped as nlohmann::type_error.
TEST(ModelEntry, MalformedJsonIsARequestError) {
  EXPECT_THROW(ModelEntry::from_json(json(7)), RequestError);
  EXPECT_THROW(ModelEntry::from_json(json::array()), RequestError);
  EXPECT_THROW(ModelEntry::from_json(json{{"model", "a:b"}, {"size", "x"}}), RequestError);
  EXPECT_THROW(ModelEntry::from_json(json{{"files", json::array({1})}}), RequestError);
  try {
    ModelEntry::from_json(json(7));
  } catch (const RequestError& e) {
    EXPECT_NE(std::string(e.what()).find("must be a JSON object, found number"), std::string::npos) << e.what();
  }
  // Found by fuzz_json_body: a number past uint64 (as a float) was cast, undefined behaviour.
  EXPECT_THROW(ModelEntry::from_json(json::parse(R"({"model": "m:t", "size": 184467440737095516161})")), RequestError);
  EXPECT_THROW(ModelEntry::from_json(json::parse(R"({"model": "m:t", "size": -1})")), RequestError);
  EXPECT_THROW(ModelEntry::from_json(json::parse(R"({"model": "m:t", "created_at": 1.5})")), RequestError);
  EXPECT_EQ(ModelEntry::from_json(json::parse(R"({"model": "m:t", "size": 18446744073709551615})")).size_bytes,
            18446744073709551615ull);
}

TEST(ModelEntry, JsonHasOllamaFieldsAndRoundTrips) {
  ModelEntry e;
  e.name = "smollm2-135m-instruct";
  e.tag = "q4_1";
  e.is_default = true;
  e.format = "gguf";
  e.architecture = "llama";
  e.n_params = 134515008;
  e.dtype = "Q4_1";
  e.size_bytes = 98362432;
  e.source = "/x/SmolLM2-135M-Instruct.Q4_1.gguf";
  e.source_kind = "gguf-file";
  e.digest = "sha256:00";
  e.created_at = 1795714771;
  e.config = json{{"n_layers", 30}};
  e.files = {FileEntry{"a.gguf", "sha256:11", 5}};
  json j = e.to_json(true);
  EXPECT_EQ(j["name"], "smollm2-135m-instruct:q4_1");
  EXPECT_EQ(j["model"], "smollm2-135m-instruct:q4_1");
  EXPECT_EQ(j["size"], 98362432);
  EXPECT_EQ(j["modified_at"], "2026-11-26T17:39:31Z");
  EXPECT_EQ(j["details"]["parameter_size"], "135M");
  EXPECT_EQ(j["details"]["quantization_level"], "Q4_1");
  EXPECT_EQ(j["details"]["format"], "gguf");
  EXPECT_FALSE(e.to_json(false).contains("files"));
  ModelEntry back = ModelEntry::from_json(j);
  EXPECT_EQ(back.name, e.name);
  EXPECT_EQ(back.tag, e.tag);
  EXPECT_TRUE(back.is_default);
  EXPECT_EQ(back.n_params, e.n_params);
  EXPECT_EQ(back.format, "gguf");
  ASSERT_EQ(back.files.size(), 1u);
  EXPECT_EQ(back.files[0].digest, "sha256:11");
  EXPECT_EQ(back.config["n_layers"], 30);
}

TEST(Manifest, SortedAndComplete) {
  std::vector<FileEntry> files = {{"b.json", "sha256:bb", 2}, {"a.safetensors", "sha256:aa", 10}};
  EXPECT_EQ(manifest_text(files), "a.safetensors sha256:aa 10\nb.json sha256:bb 2\n");
}

TEST(KeepAlive, DurationsAndNumbers) {
  EXPECT_EQ(parse_keep_alive(json("5m")), 300);
  EXPECT_EQ(parse_keep_alive(json("1h30m")), 5400);
  EXPECT_EQ(parse_keep_alive(json("45s")), 45);
  EXPECT_EQ(parse_keep_alive(json("1500ms")), 1);
  EXPECT_EQ(parse_keep_alive(json("0")), 0);
  EXPECT_EQ(parse_keep_alive(json("-1")), -1);
  EXPECT_EQ(parse_keep_alive(json(-5)), -1);
  EXPECT_EQ(parse_keep_alive(json(120)), 120);
  EXPECT_EQ(parse_keep_alive(json(nullptr)), std::nullopt);
  EXPECT_THROW(parse_keep_alive(json("5 minutes")), RequestError);
  // Found by fuzz_json_body: a number past int64 was cast (undefined behaviour); so could a
  // duration of many long pieces add up past it.
  EXPECT_THROW(parse_keep_alive(json(19900719925474099399.0)), RequestError);
  EXPECT_EQ(parse_keep_alive(json(1e12)), 1000000000000);
  std::string many;
  for (int i = 0; i < 20000; ++i) many += "999999999h";
  EXPECT_THROW(parse_keep_alive(json(many)), RequestError);
  EXPECT_THROW(parse_keep_alive(json("5d")), RequestError);
  EXPECT_THROW(parse_keep_alive(json::array()), RequestError);
  // Number shapes std::stod chokes on are a bad request, not an internal error.
  EXPECT_THROW(parse_keep_alive(json(".")), RequestError);
  EXPECT_THROW(parse_keep_alive(json("1.2.3m")), RequestError);
  EXPECT_THROW(parse_keep_alive(json(std::string(400, '9'))), RequestError);
}

TEST(GenOptions, TypesAndUnknownKeys) {
  auto o = GenOptions::from_json(json{{"temperature", 0.2}, {"top_k", 5}, {"seed", 7}, {"stop", "END"},
                                      {"num_thread", 8}},  // an Ollama option with no meaning here: ignored
                                 "options.");
  EXPECT_EQ(o.temperature, 0.2);
  EXPECT_EQ(o.top_k, 5);
  EXPECT_EQ(o.seed, 7u);
  ASSERT_TRUE(o.stop);
  EXPECT_EQ(*o.stop, std::vector<std::string>{"END"});
  EXPECT_FALSE(GenOptions::from_json(json{{"seed", -1}}, "options.").seed) << "-1 means a random seed";
  EXPECT_EQ(GenOptions::from_json(json{{"top_k", 40.0}}, "options.").top_k, 40) << "integral floats are integers";
  auto expect_error = [](const json& j, const std::string& what) {
    try {
      GenOptions::from_json(j, "options.");
      ADD_FAILURE() << j.dump() << " accepted";
    } catch (const RequestError& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error(json{{"temperature", "hot"}}, "\"options.temperature\" must be a number, found a string");
  expect_error(json{{"top_k", 1.5}}, "\"options.top_k\" must be an integer");
  expect_error(json{{"mystery", 1}}, "unknown option \"options.mystery\"");
  expect_error(json{{"stop", json::array({1})}}, "options.stop[]");
  expect_error(json{{"seed", -3}}, "seed");
  expect_error(json::array(), "must be an object");
}

TEST(OpenAiRequest, DefaultsAndLimits) {
  json msgs = json::array({{{"role", "user"}, {"content", "hi"}}});
  auto r = OpenAiRequest::from_json(json{{"model", "m"}, {"messages", msgs}}, true);
  EXPECT_EQ(r.options.temperature, 1.0) << "OpenAI's default, not Ollama's";
  EXPECT_EQ(r.options.top_p, 1.0);
  EXPECT_EQ(r.options.top_k, 0);
  EXPECT_EQ(r.options.repeat_penalty, 1.0);
  EXPECT_FALSE(r.stream);
  auto parts = OpenAiRequest::from_json(
      json{{"model", "m"},
           {"messages", json::array({{{"role", "user"},
                                      {"content", json::array({{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}})}}})},
           {"max_completion_tokens", 5}},
      true);
  EXPECT_EQ(parts.messages[0].content, "ab");
  EXPECT_EQ(parts.options.num_predict, 5);
  EXPECT_THROW(OpenAiRequest::from_json(json{{"model", "m"}, {"messages", msgs}, {"n", 3}}, true), RequestError);
  EXPECT_THROW(OpenAiRequest::from_json(json{{"model", "m"}, {"messages", msgs}, {"temperature", 2.5}}, true), RequestError);
  EXPECT_THROW(OpenAiRequest::from_json(json{{"model", "m"}, {"prompt", json::array({"a", "b"})}}, false), RequestError);
  EXPECT_EQ(OpenAiRequest::from_json(json{{"model", "m"}, {"prompt", "go"}}, false).prompt, "go");
  json image = json::array({{{"role", "user"}, {"content", json::array({{{"type", "image_url"}}})}}});
  EXPECT_THROW(OpenAiRequest::from_json(json{{"model", "m"}, {"messages", image}}, true), RequestError);
}

TEST(DefaultSocket, FollowsTheEnvironment) {
  ::setenv("RUNTIME_DIRECTORY", "/run/gptqd:/run/other", 1);
  EXPECT_EQ(default_socket_path(), "/run/gptqd/gptqd.sock");
  ::unsetenv("RUNTIME_DIRECTORY");
  ::setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
  EXPECT_EQ(default_socket_path(), "/run/user/1000/gptqd.sock");
  ::unsetenv("XDG_RUNTIME_DIR");
  EXPECT_EQ(default_socket_path(), "/tmp/gptqd-" + std::to_string(::getuid()) + "/gptqd.sock");
}

}  // namespace
}  // namespace gptqd::protocol
