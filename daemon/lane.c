/* placeholder: being written */
typedef int tq_placeholder_t;
