# SPDX-License-Identifier: Apache-2.0
# Warning flags for gptqd's own targets (third-party headers come in as SYSTEM and stay quiet).
function(gptqd_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align
      -Wunused -Woverloaded-virtual -Wimplicit-fallthrough -Wformat=2
      # GCC 12 false positives: Asio's coroutine-frame operator delete "mismatched", and
      # -Wrestrict on `"literal" + std::string` at -O3 (GCC bug 105329).
      -Wno-mismatched-new-delete -Wno-restrict>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  if(GPTQD_WERROR)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-Werror>
      $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Werror>)
  endif()
endfunction()
