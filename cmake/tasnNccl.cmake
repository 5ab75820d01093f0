# NCCL 2 for the example trainer's GPU data parallelism (examples/dist/nccl_comm.cpp: the gradient
# all-reduce of nn::CudaExec). Optional: without it the trainer builds, and asking for NCCL (more
# than one rank on the GPU, or --comm nccl) fails with "this build has no NCCL". Searched, first
# match wins, in
#   1. NCCL_ROOT (CMake variable, else environment variable): the user's override;
#   2. the CUDA toolkit (nccl.h next to cuda_runtime.h, libnccl next to libcudart; pip-installed
#      toolkits ship it there) and Debian's / NVIDIA's apt locations (libnccl-dev);
#   3. the NVIDIA wheel a PyTorch installation brings (site-packages/nvidia/nccl), asked of the
#      interpreter TASN_PYTHON (cmake/tasnCudnn.cmake's; default python3 on PATH), quietly, only
#      when 1 and 2 found nothing.
# Each place must hold nccl.h with NCCL_MAJOR >= 2 (ncclCommAbort: 2.4 or newer) and libnccl (the
# wheel ships only libnccl.so.2, no unversioned symlink: that name is looked for too).
#
# Defines TASN_HAVE_NCCL, TASN_NCCL_VERSION, TASN_NCCL_WHY and, when found, the imported target
# tasn::nccl. The top-level CMakeLists.txt compiles examples/dist/nccl_comm.cpp into tasn_train_gpu
# and defines TASN_HAVE_NCCL=1 on it (PUBLIC) when found.
set(TASN_NCCL AUTO CACHE STRING "NCCL 2 for the example trainer's GPU gradient all-reduce: AUTO (when found), ON, OFF")
set_property(CACHE TASN_NCCL PROPERTY STRINGS AUTO ON OFF)
set(NCCL_ROOT "" CACHE PATH "Folder of an NCCL installation (include/nccl.h, lib/libnccl.so); empty: search")

set(TASN_HAVE_NCCL OFF)
set(TASN_NCCL_VERSION "")
set(TASN_NCCL_WHY "no CUDA in this build")

# Looks for NCCL >= 2.4 in <include_dirs> / <lib_dirs> only. On success sets TASN_NCCL_INCLUDE,
# TASN_NCCL_LIBRARY and TASN_NCCL_VERSION in the caller; otherwise appends "<label>: <why>" to
# _tasn_nccl_tried.
function(_tasn_nccl_try label include_dirs lib_dirs)
  find_path(_inc nccl.h PATHS ${include_dirs} NO_DEFAULT_PATH NO_CACHE)
  find_library(_lib NAMES nccl libnccl.so.2 PATHS ${lib_dirs} NO_DEFAULT_PATH NO_CACHE)
  set(_why "")
  if(NOT _inc)
    set(_why "no nccl.h in ${include_dirs}")
  elseif(NOT _lib)
    set(_why "no libnccl.so / libnccl.so.2 in ${lib_dirs}")
  else()
    file(STRINGS "${_inc}/nccl.h" _defs REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) +[0-9]+")
    foreach(_part MAJOR MINOR PATCH)
      set(_v_${_part} "?")
      foreach(_d ${_defs})
        if(_d MATCHES "^#define NCCL_${_part} +([0-9]+)")
          set(_v_${_part} ${CMAKE_MATCH_1})
        endif()
      endforeach()
    endforeach()
    set(_version "${_v_MAJOR}.${_v_MINOR}.${_v_PATCH}")
    if(NOT _v_MAJOR MATCHES "^[0-9]+$" OR NOT _v_MINOR MATCHES "^[0-9]+$")
      set(_why "${_inc}/nccl.h defines no NCCL_MAJOR / NCCL_MINOR")
    elseif(_v_MAJOR LESS 2 OR (_v_MAJOR EQUAL 2 AND _v_MINOR LESS 4))
      set(_why "${_inc} holds NCCL ${_version}, the trainer needs 2.4 or newer (ncclCommAbort)")
    endif()
  endif()
  if(_why STREQUAL "")
    set(TASN_NCCL_INCLUDE "${_inc}" PARENT_SCOPE)
    set(TASN_NCCL_LIBRARY "${_lib}" PARENT_SCOPE)
    set(TASN_NCCL_VERSION "${_version}" PARENT_SCOPE)
  else()
    set(_tasn_nccl_tried ${_tasn_nccl_tried} "${label}: ${_why}" PARENT_SCOPE)
  endif()
endfunction()

if(TASN_HAVE_CUDA AND TASN_NCCL STREQUAL "OFF")
  set(TASN_NCCL_WHY "TASN_NCCL=OFF")
elseif(TASN_HAVE_CUDA)
  set(_tasn_nccl_tried "")
  set(TASN_NCCL_INCLUDE "")
  set(TASN_NCCL_LIBRARY "")
  set(_tasn_nccl_from "")

  # 1. NCCL_ROOT
  set(_root "${NCCL_ROOT}")
  if(_root STREQUAL "" AND DEFINED ENV{NCCL_ROOT})
    set(_root "$ENV{NCCL_ROOT}")
  endif()
  if(NOT _root STREQUAL "")
    _tasn_nccl_try("NCCL_ROOT=${_root}" "${_root}/include"
                   "${_root}/lib;${_root}/lib64;${_root}/lib/${CMAKE_LIBRARY_ARCHITECTURE}")
    set(_tasn_nccl_from "NCCL_ROOT")
    if(TASN_NCCL_LIBRARY STREQUAL "")
      message(WARNING "tasn: ${_tasn_nccl_tried}; looking in the CUDA toolkit and the NVIDIA wheel instead")
    endif()
  endif()

  # 2. the CUDA toolkit (plus the Debian / NVIDIA apt locations of libnccl-dev)
  # (TASN_NCCL_SKIP_TOOLKIT=ON: a test knob, to exercise the wheel search where the toolkit has NCCL)
  if(TASN_NCCL_LIBRARY STREQUAL "" AND TASN_NCCL_SKIP_TOOLKIT)
    list(APPEND _tasn_nccl_tried "the CUDA toolkit: skipped (TASN_NCCL_SKIP_TOOLKIT)")
  elseif(TASN_NCCL_LIBRARY STREQUAL "")
    get_filename_component(_cudart_dir "${CUDA_cudart_LIBRARY}" DIRECTORY)
    _tasn_nccl_try("the CUDA toolkit"
                   "${CUDAToolkit_INCLUDE_DIRS};/usr/include;/usr/include/${CMAKE_LIBRARY_ARCHITECTURE}"
                   "${CUDAToolkit_LIBRARY_DIR};${_cudart_dir};/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}")
    set(_tasn_nccl_from "the CUDA toolkit")
  endif()

  # 3. the NVIDIA wheel of a PyTorch installation (nvidia-nccl-cuXX): asked only now, quietly
  if(TASN_NCCL_LIBRARY STREQUAL "")
    tasn_find_nvidia_wheel(nvidia.nccl nvidia-nccl _whl)
    set(_py "${_whl_PY}")
    set(_wheel_dist "${_whl_DIST}")
    if(_whl_DIR STREQUAL "")
      list(APPEND _tasn_nccl_tried "the NVIDIA wheel: ${_whl_WHY}")
    else()
      _tasn_nccl_try("the NVIDIA wheel (${_py})" "${_whl_DIR}/include" "${_whl_DIR}/lib")
      if(_wheel_dist STREQUAL "")
        set(_tasn_nccl_from "the NVIDIA wheel of ${_py}")
      else()
        set(_tasn_nccl_from "the NVIDIA wheel ${_wheel_dist} of ${_py}")
      endif()
      # NCCL links the CUDA runtime statically: a wheel built for another CUDA major version
      # only needs a driver new enough for it, but say so in case it does not load.
      if(NOT TASN_NCCL_LIBRARY STREQUAL "" AND _wheel_dist MATCHES "cu([0-9]+)" AND
         NOT CMAKE_MATCH_1 STREQUAL CUDAToolkit_VERSION_MAJOR)
        message(STATUS "tasn: the NCCL wheel ${_wheel_dist} is built for CUDA ${CMAKE_MATCH_1}, this build uses "
                       "CUDA ${CUDAToolkit_VERSION} (fine with a driver that supports both; else set NCCL_ROOT)")
      endif()
    endif()
  endif()

  if(NOT TASN_NCCL_LIBRARY STREQUAL "")
    add_library(tasn::nccl INTERFACE IMPORTED)
    set_target_properties(tasn::nccl PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${TASN_NCCL_INCLUDE}"
                                                INTERFACE_LINK_LIBRARIES "${TASN_NCCL_LIBRARY}")
    set(TASN_HAVE_NCCL ON)
    set(TASN_NCCL_WHY "NCCL ${TASN_NCCL_VERSION} from ${_tasn_nccl_from}: ${TASN_NCCL_LIBRARY}")
  else()
    list(JOIN _tasn_nccl_tried "; " _tried)
    set(TASN_NCCL_WHY "no NCCL 2 found (${_tried}); set NCCL_ROOT to its folder or TASN_PYTHON to a python with nvidia-nccl")
    if(TASN_NCCL STREQUAL "ON")
      message(FATAL_ERROR "TASN_NCCL=ON but ${TASN_NCCL_WHY}")
    endif()
  endif()
endif()
message(STATUS "tasn: NCCL ${TASN_HAVE_NCCL} for the trainer's GPU gradient all-reduce (${TASN_NCCL_WHY})")
