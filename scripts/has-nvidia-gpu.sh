#!/usr/bin/env bash
# Prints 1 when the system shows an NVIDIA GPU (the driver lists one), else 0: the Makefile's default GPU=.
if [ -n "$(ls -A /proc/driver/nvidia/gpus 2>/dev/null)" ] || nvidia-smi -L >/dev/null 2>&1; then
  echo 1
else
  echo 0
fi
