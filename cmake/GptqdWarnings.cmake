# SPDX-License-Identifier: Apache-2.0
# Warning flags for gptqd's own targets (third-party headers come in as SYSTEM and stay quiet).
function(gptqd_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align
      -Wunused -Woverloaded-virtual -Wimplicit-fallthrough -Wformat=2
      # GCC 12 flags Asio's coroutine-frame operator delete as mismatched (a false positive).
      -Wno-mismatched-new-delete>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  if(GPTQD_WERROR)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-Werror>
      $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Werror>)
  endif()
endfunction()
