# Turns a file into a C array at build time (no xxd): cmake -DIN=FILE -DOUT=FILE.c -DNAME=SYMBOL
# -P embed_file.cmake writes `const unsigned char SYMBOL[]` (the bytes and a final NUL) and
# `const size_t SYMBOL_len` (the byte count, without the NUL). Written under a temporary name,
# then renamed, so an interrupted build never leaves half a file behind.
if(NOT IN OR NOT OUT OR NOT NAME)
  message(FATAL_ERROR "embed_file.cmake: IN, OUT and NAME are required")
endif()
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" n_hex)
math(EXPR n "${n_hex} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REPEAT "0x..," 16 row)
string(REGEX REPLACE "(${row})" "\\1\n" body "${body}")
file(WRITE "${OUT}.tmp"
     "// Generated from ${IN} by cmake/embed_file.cmake: do not edit.\n"
     "#include <stddef.h>\n"
     "const unsigned char ${NAME}[] = {\n${body}0x00};\n"
     "const size_t ${NAME}_len = ${n};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
