# cuDNN 9 for the example trainer's GPU layers (examples/gpu/dnn.cpp). Optional: without it the
# trainer builds without --device cuda and says why. Searched, first match wins, in
#   1. CUDNN_ROOT (CMake variable, else environment variable): the user's override;
#   2. the CUDA toolkit (cudnn.h next to cuda_runtime.h, libcudnn next to libcudart);
#   3. the NVIDIA wheel a PyTorch installation brings (site-packages/nvidia/cudnn), asked of the
#      interpreter TASN_PYTHON (default: python3 on PATH), quietly, only when 1 and 2 found nothing.
# Each place must hold cudnn.h, cudnn_version.h with CUDNN_MAJOR >= 9, and libcudnn (the wheel ships
# only libcudnn.so.9, no unversioned symlink: that name is looked for too).
#
# Linking libcudnn alone is enough: in cuDNN 9, libcudnn.so.9 is a small dispatcher that exports
# the whole API (the legacy convolution and batch-norm functions included) and dlopen()s
# libcudnn_cnn / libcudnn_ops / ... from its own folder (its RUNPATH is $ORIGIN) at run time.
# Those sub-libraries must therefore stay next to libcudnn.so.9, as every distribution puts them.
#
# Defines TASN_HAVE_CUDNN, TASN_CUDNN_VERSION and, when found, the imported target tasn::cudnn.
set(TASN_CUDNN AUTO CACHE STRING "cuDNN 9 for the example trainer's GPU layers: AUTO (when found), ON, OFF")
set_property(CACHE TASN_CUDNN PROPERTY STRINGS AUTO ON OFF)
set(TASN_PYTHON "" CACHE FILEPATH
    "Python whose NVIDIA cuDNN wheel (nvidia.cudnn) may be used (default: python3 on PATH)")

set(TASN_HAVE_CUDNN OFF)
set(TASN_CUDNN_VERSION "")
set(TASN_CUDNN_WHY "no CUDA in this build")

# Looks for cuDNN >= 9 in <include_dirs> / <lib_dirs> only. On success sets TASN_CUDNN_INCLUDE,
# TASN_CUDNN_LIBRARY and TASN_CUDNN_VERSION in the caller; otherwise appends "<label>: <why>" to
# _tasn_cudnn_tried.
function(_tasn_cudnn_try label include_dirs lib_dirs)
  find_path(_inc cudnn.h PATHS ${include_dirs} NO_DEFAULT_PATH NO_CACHE)
  find_library(_lib NAMES cudnn libcudnn.so.9 PATHS ${lib_dirs} NO_DEFAULT_PATH NO_CACHE)
  set(_why "")
  if(NOT _inc)
    set(_why "no cudnn.h in ${include_dirs}")
  elseif(NOT EXISTS "${_inc}/cudnn_version.h")
    set(_why "${_inc}/cudnn.h has no cudnn_version.h next to it (cuDNN older than 8)")
  elseif(NOT _lib)
    set(_why "no libcudnn.so / libcudnn.so.9 in ${lib_dirs}")
  else()
    file(STRINGS "${_inc}/cudnn_version.h" _defs REGEX "^#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) +[0-9]+")
    foreach(_part MAJOR MINOR PATCHLEVEL)
      set(_v_${_part} "?")
      foreach(_d ${_defs})
        if(_d MATCHES "^#define CUDNN_${_part} +([0-9]+)")
          set(_v_${_part} ${CMAKE_MATCH_1})
        endif()
      endforeach()
    endforeach()
    set(_version "${_v_MAJOR}.${_v_MINOR}.${_v_PATCHLEVEL}")
    if(NOT _v_MAJOR MATCHES "^[0-9]+$")
      set(_why "${_inc}/cudnn_version.h defines no CUDNN_MAJOR")
    elseif(_v_MAJOR LESS 9)
      set(_why "${_inc} holds cuDNN ${_version}, the trainer needs 9 or newer")
    endif()
  endif()
  if(_why STREQUAL "")
    set(TASN_CUDNN_INCLUDE "${_inc}" PARENT_SCOPE)
    set(TASN_CUDNN_LIBRARY "${_lib}" PARENT_SCOPE)
    set(TASN_CUDNN_VERSION "${_version}" PARENT_SCOPE)
  else()
    set(_tasn_cudnn_tried ${_tasn_cudnn_tried} "${label}: ${_why}" PARENT_SCOPE)
  endif()
endfunction()

if(TASN_HAVE_CUDA AND TASN_CUDNN STREQUAL "OFF")
  set(TASN_CUDNN_WHY "TASN_CUDNN=OFF")
elseif(TASN_HAVE_CUDA)
  set(_tasn_cudnn_tried "")
  set(TASN_CUDNN_INCLUDE "")
  set(TASN_CUDNN_LIBRARY "")
  set(_tasn_cudnn_from "")

  # 1. CUDNN_ROOT
  set(_root "${CUDNN_ROOT}")
  if(_root STREQUAL "" AND DEFINED ENV{CUDNN_ROOT})
    set(_root "$ENV{CUDNN_ROOT}")
  endif()
  if(NOT _root STREQUAL "")
    _tasn_cudnn_try("CUDNN_ROOT=${_root}" "${_root}/include"
                    "${_root}/lib;${_root}/lib64;${_root}/lib/${CMAKE_LIBRARY_ARCHITECTURE}")
    set(_tasn_cudnn_from "CUDNN_ROOT")
    if(TASN_CUDNN_LIBRARY STREQUAL "")
      message(WARNING "tasn: ${_tasn_cudnn_tried}; looking in the CUDA toolkit and the NVIDIA wheel instead")
    endif()
  endif()

  # 2. the CUDA toolkit (plus the Debian / NVIDIA apt locations of the standalone cuDNN package)
  # (TASN_CUDNN_SKIP_TOOLKIT=ON: a test knob, to exercise the wheel search where the toolkit has cuDNN)
  if(TASN_CUDNN_LIBRARY STREQUAL "" AND TASN_CUDNN_SKIP_TOOLKIT)
    list(APPEND _tasn_cudnn_tried "the CUDA toolkit: skipped (TASN_CUDNN_SKIP_TOOLKIT)")
  elseif(TASN_CUDNN_LIBRARY STREQUAL "")
    get_filename_component(_cudart_dir "${CUDA_cudart_LIBRARY}" DIRECTORY)
    _tasn_cudnn_try("the CUDA toolkit"
                    "${CUDAToolkit_INCLUDE_DIRS};/usr/include;/usr/include/${CMAKE_LIBRARY_ARCHITECTURE}"
                    "${CUDAToolkit_LIBRARY_DIR};${_cudart_dir};/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}")
    set(_tasn_cudnn_from "the CUDA toolkit")
  endif()

  # 3. the NVIDIA wheel of a PyTorch installation (nvidia-cudnn-cuXX): asked only now, quietly
  if(TASN_CUDNN_LIBRARY STREQUAL "")
    tasn_find_nvidia_wheel(nvidia.cudnn nvidia-cudnn _whl)
    set(_py "${_whl_PY}")
    set(_wheel_dist "${_whl_DIST}")
    if(_whl_DIR STREQUAL "")
      list(APPEND _tasn_cudnn_tried "the NVIDIA wheel: ${_whl_WHY}")
    else()
      _tasn_cudnn_try("the NVIDIA wheel (${_py})" "${_whl_DIR}/include" "${_whl_DIR}/lib")
      set(_tasn_cudnn_from "the NVIDIA wheel ${_wheel_dist} of ${_py}")
      # nvidia-cudnn-cu12 is built against CUDA 12: its sub-libraries load CUDA 12's cuBLAS.
      if(NOT TASN_CUDNN_LIBRARY STREQUAL "" AND _wheel_dist MATCHES "cu([0-9]+)" AND
         NOT CMAKE_MATCH_1 STREQUAL CUDAToolkit_VERSION_MAJOR)
        message(WARNING "tasn: the cuDNN wheel ${_wheel_dist} is built for CUDA ${CMAKE_MATCH_1} but this "
                        "build uses CUDA ${CUDAToolkit_VERSION}; set CUDNN_ROOT to a matching cuDNN if it fails to load")
      endif()
    endif()
  endif()

  if(NOT TASN_CUDNN_LIBRARY STREQUAL "")
    add_library(tasn::cudnn INTERFACE IMPORTED)
    set_target_properties(tasn::cudnn PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${TASN_CUDNN_INCLUDE}"
                                                 INTERFACE_LINK_LIBRARIES "${TASN_CUDNN_LIBRARY}")
    set(TASN_HAVE_CUDNN ON)
    set(TASN_CUDNN_WHY "cuDNN ${TASN_CUDNN_VERSION} from ${_tasn_cudnn_from}: ${TASN_CUDNN_LIBRARY}")
  else()
    list(JOIN _tasn_cudnn_tried "; " _tried)
    set(TASN_CUDNN_WHY "no cuDNN 9 found (${_tried}); set CUDNN_ROOT to its folder or TASN_PYTHON to a python with nvidia-cudnn")
    if(TASN_CUDNN STREQUAL "ON")
      message(FATAL_ERROR "TASN_CUDNN=ON but ${TASN_CUDNN_WHY}")
    endif()
  endif()
endif()
message(STATUS "tasn: cuDNN ${TASN_HAVE_CUDNN} for the trainer's GPU layers (${TASN_CUDNN_WHY})")
