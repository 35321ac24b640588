// SPDX-License-Identifier: Apache-2.0
// Small coroutine helpers for the io thread (daemon layer): a single-consumer queue that a
// worker thread feeds through asio::post, and "run this blocking function on the pool".
#pragma once

#include <utility>  // before Boost 1.74's awaitable.hpp, which forgets it

#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <deque>
#include <exception>
#include <memory>
#include <optional>
#include <thread>
#include <type_traits>

namespace gptqd::daemon {

namespace asio = boost::asio;

// Items are pushed and popped on the io thread only (workers post their pushes there), so the
// queue needs no lock; the timer is just a wake-up signal.
template <typename T>
class AsyncQueue {
 public:
  explicit AsyncQueue(asio::any_io_executor exec) : signal_(exec) {}

  void push(T item) {
    items_.push_back(std::move(item));
    signal_.cancel();
  }
  void close() {
    closed_ = true;
    signal_.cancel();
  }
  // The next item, or nullopt once the queue is closed and drained.
  asio::awaitable<std::optional<T>> pop() {
    while (items_.empty() && !closed_) {
      signal_.expires_at(asio::steady_timer::time_point::max());
      boost::system::error_code ec;
      co_await signal_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    if (items_.empty()) co_return std::nullopt;
    T item = std::move(items_.front());
    items_.pop_front();
    co_return item;
  }

 private:
  std::deque<T> items_;
  bool closed_ = false;
  asio::steady_timer signal_;
};

namespace detail {

// Runs `fn` where `launch` puts it and resumes the calling coroutine on its own executor with
// the result (or rethrows what `fn` threw).
template <typename Fn, typename Launch>
asio::awaitable<std::invoke_result_t<Fn>> run_elsewhere(Fn fn, Launch launch) {
  using R = std::invoke_result_t<Fn>;
  auto exec = co_await asio::this_coro::executor;
  struct State {
    std::optional<std::conditional_t<std::is_void_v<R>, bool, R>> value;
    std::exception_ptr error;
  };
  auto state = std::make_shared<State>();
  auto done = std::make_shared<AsyncQueue<bool>>(exec);
  launch([state, done, exec, fn = std::move(fn)]() mutable {
    try {
      if constexpr (std::is_void_v<R>) {
        fn();
        state->value = true;
      } else {
        state->value.emplace(fn());
      }
    } catch (...) {
      state->error = std::current_exception();
    }
    asio::post(exec, [done] { done->close(); });
  });
  co_await done->pop();
  if (state->error) std::rethrow_exception(state->error);
  if constexpr (!std::is_void_v<R>) co_return std::move(*state->value);
}

struct PostTo {
  asio::thread_pool* pool;
  template <typename Task>
  void operator()(Task task) const { asio::post(*pool, std::move(task)); }
};

struct NewThread {
  template <typename Task>
  void operator()(Task task) const { std::thread(std::move(task)).detach(); }
};

}  // namespace detail

// Runs `fn` on `pool` and resumes the calling coroutine on its own executor with the result
// (or rethrows what `fn` threw).
template <typename Fn>
asio::awaitable<std::invoke_result_t<Fn>> run_blocking(asio::thread_pool& pool, Fn fn) {
  return detail::run_elsewhere(std::move(fn), detail::PostTo{&pool});
}

// Like run_blocking, but on a thread of its own: for work that blocks for minutes (downloads),
// which must not occupy the pool that short blocking work shares.
template <typename Fn>
asio::awaitable<std::invoke_result_t<Fn>> run_on_thread(Fn fn) {
  return detail::run_elsewhere(std::move(fn), detail::NewThread{});
}

}  // namespace gptqd::daemon
