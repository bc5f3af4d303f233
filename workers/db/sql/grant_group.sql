GRANT {group} TO {user}
