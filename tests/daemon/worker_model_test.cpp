// SPDX-License-Identifier: Apache-2.0
// WorkerModel's sessions: prefix reuse, and the memory check of a new KV cache (idle caches make
// room first; what still does not fit is refused with the num_ctx that would).
#include <gtest/gtest.h>

#include "daemon/device_worker.h"
#include "engine/error.h"
#include "engine/memory_plan.h"
#include "engine/model_source.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd::daemon {
namespace {

class WorkerModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test::write_tiny_hf_model(dir_.path() / "m", test::TinyHfOptions{});
    ModelHandle h;
    h.ref = "tiny:f16";
    h.files = engine::inspect_model_source(dir_.path() / "m").files;
    engine::LoadOptions o;
    o.n_threads = 1;
    auto model = engine::LlamaModel::load(h.files, o);
    wm_ = std::make_unique<WorkerModel>(h, std::move(model), 0.0);
    kv_per_token_ = engine::plan_memory(wm_->model().config(), 0, 1, 1).kv_bytes_per_token;
  }
  test::TempDir dir_;
  std::unique_ptr<WorkerModel> wm_;
  uint64_t kv_per_token_ = 0;
};

TEST_F(WorkerModelTest, NewCacheMustFitAndSaysWhatWould) {
  const std::vector<int32_t> prompt = {1, 2, 3};
  auto s = wm_->take_session(prompt, 128, 128 * kv_per_token_);  // exactly fits
  ASSERT_TRUE(s);
  EXPECT_EQ(s->cache_bytes(), 128 * kv_per_token_);
  try {
    wm_->take_session(prompt, 128, 100 * kv_per_token_);
    FAIL() << "a 128-token cache fit in 100 tokens' worth of memory";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::no_space);
    EXPECT_NE(std::string(e.what()).find("the KV cache needs"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("for num_ctx 128"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("of system memory is available"), std::string::npos) << e.what();
  }
}

TEST_F(WorkerModelTest, IdleCachesMakeRoomFirst) {
  auto a = wm_->take_session({1, 2}, 128, 0);
  auto b = wm_->take_session({3, 4}, 128, 0);
  wm_->give_back(std::move(a));
  wm_->give_back(std::move(b));
  const uint64_t with_idle = wm_->size_bytes();
  // 10 bytes free: a 64-token cache fits only once the oldest idle 128-token cache is dropped,
  // and one is enough.
  auto c = wm_->take_session({9, 9, 9}, 64, 10);
  ASSERT_TRUE(c);
  EXPECT_EQ(wm_->size_bytes(), with_idle - 128 * kv_per_token_);
}

TEST_F(WorkerModelTest, ReusedCacheNeedsNoMemory) {
  auto a = wm_->take_session({1, 2, 3}, 128, 0);
  engine::Session* raw = a.get();
  wm_->give_back(std::move(a));
  auto again = wm_->take_session({1, 2, 3, 4}, 128, 1);  // 1 byte available: only reuse can work
  EXPECT_EQ(again.get(), raw);
}

}  // namespace
}  // namespace gptqd::daemon
