# tasn_find_nvidia_wheel(<module> <dist_prefix> <out>): where a PyTorch installation's NVIDIA wheel
# of a CUDA library lives (nvidia.cudnn / nvidia-cudnn-cuXX, nvidia.nccl / nvidia-nccl-cuXX), asked
# of the interpreter TASN_PYTHON (default: python3 on PATH), quietly (cmake/tasnCudnn.cmake and
# cmake/tasnNccl.cmake look here after their other places). Sets in the caller:
#   <out>_PY    the interpreter asked ("" when none);
#   <out>_DIR   the package folder (holding include/ and lib/), "" when not found;
#   <out>_DIST  the installed distributions whose names start with <dist_prefix> (comma-separated);
#   <out>_WHY   why nothing was found.
function(tasn_find_nvidia_wheel module dist_prefix out)
  set(_py "${TASN_PYTHON}")
  if(_py STREQUAL "")
    find_program(_tasn_python3 python3 NO_CACHE)
    set(_py "${_tasn_python3}")
  endif()
  set(${out}_PY "${_py}" PARENT_SCOPE)
  set(${out}_DIR "" PARENT_SCOPE)
  set(${out}_DIST "" PARENT_SCOPE)
  if(NOT _py)
    set(${out}_PY "" PARENT_SCOPE)
    set(${out}_WHY "no python3 on PATH (set TASN_PYTHON)" PARENT_SCOPE)
    return()
  endif()
  # Prints "<package folder>;<distribution names>"; namespace packages have no __file__.
  string(CONCAT _script "import importlib.metadata as m, ${module} as c\n"
                 "names = {d.metadata['Name'] or '' for d in m.distributions()}\n"
                 "print(list(c.__path__)[0] + ';' + ','.join(sorted(n for n in names if n.lower().startswith('${dist_prefix}'))))")
  execute_process(
    COMMAND "${_py}" -c "${_script}"
    OUTPUT_VARIABLE _wheel RESULT_VARIABLE _rc ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE TIMEOUT 30)
  if(NOT _rc EQUAL 0 OR _wheel STREQUAL "")
    set(${out}_WHY "${_py} does not run or cannot import ${module}" PARENT_SCOPE)
    return()
  endif()
  list(GET _wheel 0 _dir)
  list(LENGTH _wheel _n)
  set(_dist "")
  if(_n GREATER 1)
    list(GET _wheel 1 _dist)
  endif()
  set(${out}_DIR "${_dir}" PARENT_SCOPE)
  set(${out}_DIST "${_dist}" PARENT_SCOPE)
  set(${out}_WHY "" PARENT_SCOPE)
endfunction()
