# SPDX-License-Identifier: Apache-2.0
# What `cmake --install` puts where: gptqd and gptqctl, the systemd units (ExecStart names the
# installed gptqd), sysusers.d, tmpfiles.d, the D-Bus system-bus policy and a default config.
# Packagers: `DESTDIR=/pkg cmake --install build --prefix /usr`.
include(GNUInstallDirs)

# Where systemd and the bus look, from their pkg-config files when those exist (absolute, e.g.
# /lib/systemd/system on Debian); otherwise under the install prefix. -D<VAR>=DIR overrides;
# a relative DIR is taken under the prefix given at install time.
pkg_get_variable(_gptqd_unit_dir systemd systemdsystemunitdir)
pkg_get_variable(_gptqd_sysusers_dir systemd sysusersdir)
pkg_get_variable(_gptqd_tmpfiles_dir systemd tmpfilesdir)
pkg_get_variable(_gptqd_dbus_data_dir dbus-1 datadir)
if(NOT _gptqd_unit_dir)
  set(_gptqd_unit_dir "lib/systemd/system")
endif()
if(NOT _gptqd_sysusers_dir)
  set(_gptqd_sysusers_dir "lib/sysusers.d")
endif()
if(NOT _gptqd_tmpfiles_dir)
  set(_gptqd_tmpfiles_dir "lib/tmpfiles.d")
endif()
if(_gptqd_dbus_data_dir)
  set(_gptqd_dbus_policy_dir "${_gptqd_dbus_data_dir}/dbus-1/system.d")
else()
  set(_gptqd_dbus_policy_dir "${CMAKE_INSTALL_DATAROOTDIR}/dbus-1/system.d")
endif()
set(GPTQD_SYSTEMD_UNIT_DIR "${_gptqd_unit_dir}" CACHE STRING "Where gptqd.service and gptqd.socket are installed")
set(GPTQD_SYSUSERS_DIR "${_gptqd_sysusers_dir}" CACHE STRING "Where the sysusers.d file is installed")
set(GPTQD_TMPFILES_DIR "${_gptqd_tmpfiles_dir}" CACHE STRING "Where the tmpfiles.d file is installed")
set(GPTQD_DBUS_POLICY_DIR "${_gptqd_dbus_policy_dir}" CACHE STRING "Where the D-Bus system-bus policy is installed")

install(TARGETS gptqd gptqctl RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")

# The rest runs at install time, so that `cmake --install --prefix P` puts P into ExecStart and
# the config path. file(INSTALL) adds $DESTDIR itself.
install(CODE "
set(_gptqd_source_dir \"${PROJECT_SOURCE_DIR}\")
set(_gptqd_binary_dir \"${PROJECT_BINARY_DIR}\")
set(_gptqd_bindir \"${CMAKE_INSTALL_BINDIR}\")
set(_gptqd_sysconfdir \"${CMAKE_INSTALL_SYSCONFDIR}\")
set(_gptqd_unit_dir \"${GPTQD_SYSTEMD_UNIT_DIR}\")
set(_gptqd_sysusers_dir \"${GPTQD_SYSUSERS_DIR}\")
set(_gptqd_tmpfiles_dir \"${GPTQD_TMPFILES_DIR}\")
set(_gptqd_dbus_policy_dir \"${GPTQD_DBUS_POLICY_DIR}\")
")
install(CODE [==[
foreach(_var _gptqd_bindir _gptqd_unit_dir _gptqd_sysusers_dir _gptqd_tmpfiles_dir _gptqd_dbus_policy_dir)
  if(NOT IS_ABSOLUTE "${${_var}}")
    set(${_var} "${CMAKE_INSTALL_PREFIX}/${${_var}}")
  endif()
endforeach()
# GNUInstallDirs' rule: the prefix /usr keeps its configuration in /etc.
if(IS_ABSOLUTE "${_gptqd_sysconfdir}")
  set(_gptqd_config_dir "${_gptqd_sysconfdir}/gptqd")
elseif(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  set(_gptqd_config_dir "/etc/gptqd")
else()
  set(_gptqd_config_dir "${CMAKE_INSTALL_PREFIX}/${_gptqd_sysconfdir}/gptqd")
endif()

set(GPTQD_BINDIR "${_gptqd_bindir}")
set(GPTQD_CONFIG_FILE "${_gptqd_config_dir}/gptqd.json")
configure_file("${_gptqd_source_dir}/systemd/gptqd.service.in" "${_gptqd_binary_dir}/systemd/gptqd.service" @ONLY)
file(INSTALL "${_gptqd_binary_dir}/systemd/gptqd.service" "${_gptqd_source_dir}/systemd/gptqd.socket"
     DESTINATION "${_gptqd_unit_dir}")
file(INSTALL "${_gptqd_source_dir}/systemd/gptqd.sysusers.conf" DESTINATION "${_gptqd_sysusers_dir}" RENAME gptqd.conf)
file(INSTALL "${_gptqd_source_dir}/systemd/gptqd.tmpfiles.conf" DESTINATION "${_gptqd_tmpfiles_dir}" RENAME gptqd.conf)
file(INSTALL "${_gptqd_source_dir}/systemd/org.gptqd.Daemon1.conf" DESTINATION "${_gptqd_dbus_policy_dir}")
# An operator's edited config survives reinstalls.
if(EXISTS "$ENV{DESTDIR}${GPTQD_CONFIG_FILE}")
  message(STATUS "Keeping: $ENV{DESTDIR}${GPTQD_CONFIG_FILE}")
else()
  file(INSTALL "${_gptqd_source_dir}/systemd/gptqd.json" DESTINATION "${_gptqd_config_dir}")
endif()
]==])
