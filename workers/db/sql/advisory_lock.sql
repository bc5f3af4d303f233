SELECT {fn}(%s, %s)
