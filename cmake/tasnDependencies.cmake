# Dependencies: Debian packages by default (libeigen3-dev, libgtest-dev/googletest, libbenchmark-dev).
# With TASN_DEPS_DIR (machines without those packages, e.g. the lent GPU machine) the same
# libraries come from a prepared folder: eigen3/ (headers), googletest/ and benchmark/ (sources).
# See scripts/prepare-deps.sh.

find_package(OpenMP REQUIRED COMPONENTS CXX)

if(TASN_DEPS_DIR AND EXISTS "${TASN_DEPS_DIR}/eigen3/Eigen/Core")
  add_library(Eigen3::Eigen INTERFACE IMPORTED)
  set_target_properties(Eigen3::Eigen PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${TASN_DEPS_DIR}/eigen3")
  set(TASN_EIGEN_FROM_DEPS ON)
  message(STATUS "tasn: Eigen from ${TASN_DEPS_DIR}/eigen3")
else()
  set(TASN_EIGEN_FROM_DEPS OFF)
  find_package(Eigen3 3.3 REQUIRED CONFIG)
  message(STATUS "tasn: Eigen ${Eigen3_VERSION} from ${Eigen3_DIR}")
endif()

# nlohmann/json (Debian: nlohmann-json3-dev) for the example trainer's safetensors files.
if(TASN_BUILD_TESTS OR TASN_BUILD_EXAMPLES)
  if(TASN_DEPS_DIR AND EXISTS "${TASN_DEPS_DIR}/nlohmann_json/nlohmann/json.hpp")
    add_library(nlohmann_json::nlohmann_json INTERFACE IMPORTED)
    set_target_properties(nlohmann_json::nlohmann_json PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${TASN_DEPS_DIR}/nlohmann_json")
  else()
    find_package(nlohmann_json 3 REQUIRED)
  endif()
endif()

if(TASN_BUILD_TESTS)
  if(TASN_DEPS_DIR AND EXISTS "${TASN_DEPS_DIR}/googletest/CMakeLists.txt")
    set(INSTALL_GTEST OFF CACHE BOOL "" FORCE)
    set(BUILD_GMOCK OFF CACHE BOOL "" FORCE)
    add_subdirectory("${TASN_DEPS_DIR}/googletest" "${CMAKE_BINARY_DIR}/_deps/googletest" EXCLUDE_FROM_ALL)
    if(NOT TARGET GTest::gtest_main)  # GoogleTest >= 1.11 defines the aliases itself
      add_library(GTest::gtest ALIAS gtest)
      add_library(GTest::gtest_main ALIAS gtest_main)
    endif()
  else()
    find_package(GTest REQUIRED)
  endif()
endif()

if(TASN_BUILD_BENCHMARKS)
  if(TASN_DEPS_DIR AND EXISTS "${TASN_DEPS_DIR}/benchmark/CMakeLists.txt")
    set(BENCHMARK_ENABLE_TESTING OFF CACHE BOOL "" FORCE)
    set(BENCHMARK_ENABLE_GTEST_TESTS OFF CACHE BOOL "" FORCE)
    set(BENCHMARK_ENABLE_WERROR OFF CACHE BOOL "" FORCE)
    set(BENCHMARK_ENABLE_INSTALL OFF CACHE BOOL "" FORCE)
    add_subdirectory("${TASN_DEPS_DIR}/benchmark" "${CMAKE_BINARY_DIR}/_deps/benchmark" EXCLUDE_FROM_ALL)
  else()
    find_package(benchmark REQUIRED)
  endif()
endif()
